//! Network decisions, without I/O: what `ip` reports is parsed into [`Link`]
//! and [`Route`], and the commands that bring the machine to the plan are
//! computed from them (reconcile: observe, decide, execute).

use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::error::LabError;
use crate::ops::Cmd;
use crate::plan::{
    HostPlan, PREFIX_LEN, PRIVATE_BRIDGE, PRIVATE_IFACE, PRIVATE_NET, PUBLIC_BRIDGE, PUBLIC_IFACE,
    PUBLIC_NET, bridge_addr,
};

/// One network interface as `ip -j -d addr show` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub up: bool,
    pub master: Option<String>,
    /// `linkinfo.info_kind`: bridge, veth, ...
    pub kind: Option<String>,
    pub alias: Option<String>,
    pub addrs: Vec<(Ipv4Addr, u8)>,
}

#[derive(Deserialize)]
struct RawLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    ifalias: Option<String>,
    #[serde(default)]
    linkinfo: Option<RawLinkInfo>,
    #[serde(default)]
    addr_info: Vec<RawAddr>,
}

#[derive(Deserialize)]
struct RawLinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

#[derive(Deserialize)]
struct RawAddr {
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    prefixlen: Option<u8>,
}

/// Parses the JSON of `ip -j -d addr show`.
pub fn parse_links(json: &str) -> Result<Vec<Link>, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let raw: Vec<RawLink> = serde_json::from_str(json)?;
    Ok(raw
        .into_iter()
        .map(|r| Link {
            up: r.flags.iter().any(|f| f == "UP"),
            master: r.master,
            kind: r.linkinfo.and_then(|i| i.info_kind),
            alias: r.ifalias.filter(|a| !a.is_empty()),
            addrs: r
                .addr_info
                .iter()
                .filter(|a| a.family.as_deref() == Some("inet"))
                .filter_map(|a| Some((a.local.as_deref()?.parse().ok()?, a.prefixlen?)))
                .collect(),
            name: r.ifname,
        })
        .collect())
}

/// One IPv4 route as `ip -j -4 route show table all` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `None` for the default route.
    pub dst: Option<(Ipv4Addr, u8)>,
    pub dev: Option<String>,
    /// The route as text, for messages.
    pub text: String,
}

#[derive(Deserialize)]
struct RawRoute {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    dst: String,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

/// Parses the JSON of `ip -j -4 route show table all`.
pub fn parse_routes(json: &str) -> Result<Vec<Route>, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let raw: Vec<RawRoute> = serde_json::from_str(json)?;
    Ok(raw
        .into_iter()
        .map(|r| {
            let dst = if r.dst == "default" {
                None
            } else {
                let (a, l) = r.dst.split_once('/').unwrap_or((&r.dst, "32"));
                a.parse().ok().zip(l.parse().ok())
            };
            let mut text = String::new();
            if let Some(k) = &r.kind {
                text.push_str(k);
                text.push(' ');
            }
            text.push_str(&r.dst);
            if let Some(g) = &r.gateway {
                text.push_str(&format!(" via {g}"));
            }
            if let Some(d) = &r.dev {
                text.push_str(&format!(" dev {d}"));
            }
            if let Some(t) = &r.table {
                text.push_str(&format!(" table {t}"));
            }
            Route {
                dst: if r.dst == "default" { None } else { dst },
                dev: r.dev,
                text,
            }
        })
        .collect())
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// Whether two prefixes share any address.
pub fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let m = mask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

/// Routes that collide with the lab's ranges: any non-default route that
/// overlaps one of them and is not on the lab's own bridges. A default route
/// is not a collision (a more specific lab route does not hijack a real network).
pub fn route_collisions(routes: &[Route]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (net, bridge) in [(PUBLIC_NET, PUBLIC_BRIDGE), (PRIVATE_NET, PRIVATE_BRIDGE)] {
        for r in routes {
            let Some(dst) = r.dst else { continue };
            if r.dev.as_deref() == Some(bridge) {
                continue;
            }
            if overlaps(dst, (net, PREFIX_LEN)) {
                out.push((format!("{net}/{PREFIX_LEN}"), r.text.clone()));
            }
        }
    }
    out
}

/// The alias the lab writes on its bridges, naming the cluster that owns them.
pub fn bridge_alias(cluster: &str) -> String {
    format!("apiary-lab cluster={cluster}")
}

/// Commands that bring the two bridges to the plan, given the root namespace's links.
pub fn plan_network(cluster: &str, links: &[Link]) -> Result<Vec<Cmd>, LabError> {
    let alias = bridge_alias(cluster);
    let mut cmds = Vec::new();
    for (bridge, net) in [(PUBLIC_BRIDGE, PUBLIC_NET), (PRIVATE_BRIDGE, PRIVATE_NET)] {
        let addr = (bridge_addr(net), PREFIX_LEN);
        match links.iter().find(|l| l.name == bridge) {
            None => {
                cmds.push(Cmd::ip(&format!("link add name {bridge} type bridge")));
                cmds.push(Cmd::new("ip").args(["link", "set", "dev", bridge, "alias", &alias]));
                cmds.push(Cmd::ip(&format!(
                    "addr add {}/{} dev {bridge}",
                    addr.0, addr.1
                )));
                cmds.push(Cmd::ip(&format!("link set dev {bridge} up")));
            }
            Some(l) => {
                if l.kind.as_deref() != Some("bridge") {
                    return Err(LabError::LinkConflict {
                        link: bridge.to_string(),
                        reason: format!(
                            "is a {} link, not a bridge",
                            l.kind.as_deref().unwrap_or("plain")
                        ),
                    });
                }
                match l.alias.as_deref() {
                    Some(a) if a == alias => {}
                    Some(a) if a.starts_with("apiary-lab ") => {
                        return Err(LabError::LabInUse {
                            bridge: bridge.to_string(),
                            owner: a.to_string(),
                        });
                    }
                    Some(a) => {
                        return Err(LabError::LinkConflict {
                            link: bridge.to_string(),
                            reason: format!("was not made by apiary (alias {a:?})"),
                        });
                    }
                    // A bridge without alias is one we made and were interrupted on.
                    None => cmds
                        .push(Cmd::new("ip").args(["link", "set", "dev", bridge, "alias", &alias])),
                }
                if !l.addrs.contains(&addr) {
                    cmds.push(Cmd::ip(&format!(
                        "addr add {}/{} dev {bridge}",
                        addr.0, addr.1
                    )));
                }
                if !l.up {
                    cmds.push(Cmd::ip(&format!("link set dev {bridge} up")));
                }
            }
        }
    }
    Ok(cmds)
}

/// Commands that bring one host's namespace and links to the plan.
/// `root` are the root namespace's links; `inner` the namespace's, `None` if
/// the namespace does not exist. A veth pair missing either end is recreated
/// whole, which completes a host that was interrupted half-way.
pub fn plan_host_links(host: &HostPlan, root: &[Link], inner: Option<&[Link]>) -> Vec<Cmd> {
    let ns = host.netns.as_str();
    let mut cmds = Vec::new();
    let inner_links: &[Link] = inner.unwrap_or(&[]);
    if inner.is_none() {
        cmds.push(Cmd::ip(&format!("netns add {ns}")));
    }
    for (outer, iface, bridge, ip) in [
        (
            &host.veth_private,
            PRIVATE_IFACE,
            PRIVATE_BRIDGE,
            host.private_ip,
        ),
        (
            &host.veth_public,
            PUBLIC_IFACE,
            PUBLIC_BRIDGE,
            host.public_ip,
        ),
    ] {
        let o = root.iter().find(|l| &l.name == outer);
        let i = inner_links.iter().find(|l| l.name == iface);
        let fresh = o.is_none() || i.is_none();
        if fresh {
            if o.is_some() {
                cmds.push(Cmd::ip(&format!("link del {outer}")));
            }
            if i.is_some() {
                cmds.push(Cmd::ip(&format!("-n {ns} link del {iface}")));
            }
            cmds.push(Cmd::ip(&format!(
                "link add {outer} type veth peer name {iface} netns {ns}"
            )));
        }
        if fresh || o.is_some_and(|o| o.master.as_deref() != Some(bridge) || !o.up) {
            cmds.push(Cmd::ip(&format!("link set dev {outer} master {bridge} up")));
        }
        if fresh || i.is_some_and(|i| !i.addrs.contains(&(ip, PREFIX_LEN))) {
            cmds.push(Cmd::ip(&format!(
                "-n {ns} addr add {ip}/{PREFIX_LEN} dev {iface}"
            )));
        }
        if fresh || i.is_some_and(|i| !i.up) {
            cmds.push(Cmd::ip(&format!("-n {ns} link set dev {iface} up")));
        }
    }
    if !inner_links.iter().any(|l| l.name == "lo" && l.up) {
        cmds.push(Cmd::ip(&format!("-n {ns} link set dev lo up")));
    }
    cmds
}

/// Root-namespace links the lab owns: its bridges and anything enslaved to them.
pub fn lab_links(links: &[Link]) -> (Vec<String>, Vec<String>) {
    let bridges = [PUBLIC_BRIDGE, PRIVATE_BRIDGE];
    let ports = links
        .iter()
        .filter(|l| l.master.as_deref().is_some_and(|m| bridges.contains(&m)))
        .map(|l| l.name.clone())
        .collect();
    let own = links
        .iter()
        .filter(|l| bridges.contains(&l.name.as_str()))
        .map(|l| l.name.clone())
        .collect();
    (ports, own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan_host;
    use std::path::Path;

    const IP_ADDR_JSON: &str = r#"[
      {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"operstate":"UNKNOWN",
       "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
      {"ifindex":9,"ifname":"apiary-pub","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"ifalias":"apiary-lab cluster=bees",
       "linkinfo":{"info_kind":"bridge","info_data":{"stp_state":0}},
       "addr_info":[{"family":"inet","local":"198.18.0.1","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]},
      {"ifindex":10,"ifname":"apiary-priv","flags":["BROADCAST","MULTICAST"],
       "linkinfo":{"info_kind":"bridge"},"addr_info":[]},
      {"ifindex":11,"ifname":"ap0-priv","flags":["BROADCAST","UP"],"master":"apiary-priv",
       "linkinfo":{"info_kind":"veth","info_slave_kind":"bridge"},"addr_info":[]}
    ]"#;

    fn host() -> HostPlan {
        plan_host(
            "bees",
            "queenbee",
            0,
            Path::new("/s"),
            Path::new("/run/apiary"),
        )
    }

    fn strings(cmds: &[Cmd]) -> Vec<String> {
        cmds.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn parses_ip_json() {
        let links = parse_links(IP_ADDR_JSON).expect("json");
        assert_eq!(links.len(), 4);
        assert_eq!(links[1].alias.as_deref(), Some("apiary-lab cluster=bees"));
        assert_eq!(links[1].kind.as_deref(), Some("bridge"));
        assert_eq!(links[1].addrs, vec![(Ipv4Addr::new(198, 18, 0, 1), 24)]);
        assert!(links[1].up && !links[2].up);
        assert_eq!(links[3].master.as_deref(), Some("apiary-priv"));
        assert!(parse_links("").expect("empty").is_empty());
    }

    #[test]
    fn fresh_network_creates_both_bridges() {
        let cmds = plan_network("bees", &[]).expect("plan");
        assert_eq!(
            strings(&cmds),
            vec![
                "ip link add name apiary-pub type bridge",
                "ip link set dev apiary-pub alias \"apiary-lab cluster=bees\"",
                "ip addr add 198.18.0.1/24 dev apiary-pub",
                "ip link set dev apiary-pub up",
                "ip link add name apiary-priv type bridge",
                "ip link set dev apiary-priv alias \"apiary-lab cluster=bees\"",
                "ip addr add 10.231.0.1/24 dev apiary-priv",
                "ip link set dev apiary-priv up",
            ]
        );
    }

    #[test]
    fn network_completes_what_is_missing_and_then_is_quiet() {
        let links = parse_links(IP_ADDR_JSON).expect("json");
        let cmds = plan_network("bees", &links).expect("plan");
        assert_eq!(
            strings(&cmds),
            vec![
                "ip link set dev apiary-priv alias \"apiary-lab cluster=bees\"",
                "ip addr add 10.231.0.1/24 dev apiary-priv",
                "ip link set dev apiary-priv up",
            ]
        );
        let mut done = links.clone();
        done[2].alias = Some(bridge_alias("bees"));
        done[2].up = true;
        done[2].addrs = vec![(Ipv4Addr::new(10, 231, 0, 1), 24)];
        assert!(plan_network("bees", &done).expect("plan").is_empty());
    }

    #[test]
    fn network_refuses_another_lab_or_a_foreign_link() {
        let links = parse_links(IP_ADDR_JSON).expect("json");
        assert!(matches!(
            plan_network("wasps", &links),
            Err(LabError::LabInUse { owner, .. }) if owner == "apiary-lab cluster=bees"
        ));
        let foreign = vec![Link {
            name: "apiary-pub".into(),
            kind: Some("dummy".into()),
            ..Link::default()
        }];
        assert!(matches!(
            plan_network("bees", &foreign),
            Err(LabError::LinkConflict { .. })
        ));
    }

    #[test]
    fn fresh_host_gets_namespace_veths_addresses_and_lo() {
        let cmds = plan_host_links(&host(), &[], None);
        assert_eq!(
            strings(&cmds),
            vec![
                "ip netns add bees.queenbee",
                "ip link add ap0-priv type veth peer name eth0 netns bees.queenbee",
                "ip link set dev ap0-priv master apiary-priv up",
                "ip -n bees.queenbee addr add 10.231.0.11/24 dev eth0",
                "ip -n bees.queenbee link set dev eth0 up",
                "ip link add ap0-pub type veth peer name eth1 netns bees.queenbee",
                "ip link set dev ap0-pub master apiary-pub up",
                "ip -n bees.queenbee addr add 198.18.0.11/24 dev eth1",
                "ip -n bees.queenbee link set dev eth1 up",
                "ip -n bees.queenbee link set dev lo up",
            ]
        );
    }

    fn link(name: &str, up: bool, master: Option<&str>, addr: Option<Ipv4Addr>) -> Link {
        Link {
            name: name.into(),
            up,
            master: master.map(Into::into),
            kind: Some("veth".into()),
            alias: None,
            addrs: addr.map(|a| (a, 24)).into_iter().collect(),
        }
    }

    #[test]
    fn complete_host_needs_nothing() {
        let h = host();
        let root = vec![
            link("ap0-priv", true, Some("apiary-priv"), None),
            link("ap0-pub", true, Some("apiary-pub"), None),
        ];
        let inner = vec![
            link("lo", true, None, Some(Ipv4Addr::LOCALHOST)),
            link("eth0", true, None, Some(h.private_ip)),
            link("eth1", true, None, Some(h.public_ip)),
        ];
        assert!(plan_host_links(&h, &root, Some(&inner)).is_empty());
    }

    #[test]
    fn half_created_host_is_completed() {
        let h = host();
        // interrupted after the private pair's root end lost its peer and before the public pair
        let root = vec![link("ap0-priv", false, None, None)];
        let inner = vec![link("lo", false, None, None)];
        assert_eq!(
            strings(&plan_host_links(&h, &root, Some(&inner))),
            vec![
                "ip link del ap0-priv",
                "ip link add ap0-priv type veth peer name eth0 netns bees.queenbee",
                "ip link set dev ap0-priv master apiary-priv up",
                "ip -n bees.queenbee addr add 10.231.0.11/24 dev eth0",
                "ip -n bees.queenbee link set dev eth0 up",
                "ip link add ap0-pub type veth peer name eth1 netns bees.queenbee",
                "ip link set dev ap0-pub master apiary-pub up",
                "ip -n bees.queenbee addr add 198.18.0.11/24 dev eth1",
                "ip -n bees.queenbee link set dev eth1 up",
                "ip -n bees.queenbee link set dev lo up",
            ]
        );
        // both ends there but the inner one lost its address and is down
        let root = vec![
            link("ap0-priv", true, Some("apiary-priv"), None),
            link("ap0-pub", false, None, None),
        ];
        let inner = vec![
            link("lo", true, None, None),
            link("eth0", false, None, None),
            link("eth1", true, None, Some(h.public_ip)),
        ];
        assert_eq!(
            strings(&plan_host_links(&h, &root, Some(&inner))),
            vec![
                "ip -n bees.queenbee addr add 10.231.0.11/24 dev eth0",
                "ip -n bees.queenbee link set dev eth0 up",
                "ip link set dev ap0-pub master apiary-pub up",
            ]
        );
    }

    #[test]
    fn route_collisions_ignore_default_and_our_bridges() {
        let json = r#"[
          {"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
          {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},
          {"dst":"198.18.0.0/24","dev":"apiary-pub","protocol":"kernel","scope":"link","flags":[]},
          {"type":"local","dst":"10.231.0.1","table":"local","dev":"apiary-priv","flags":[]},
          {"dst":"10.231.1.0/24","dev":"eth0","flags":[]}
        ]"#;
        let routes = parse_routes(json).expect("json");
        assert_eq!(routes[0].dst, None);
        assert_eq!(routes[3].dst, Some((Ipv4Addr::new(10, 231, 0, 1), 32)));
        assert!(route_collisions(&routes).is_empty());

        let bad = parse_routes(
            r#"[{"dst":"10.0.0.0/8","gateway":"192.0.2.9","dev":"eth0","flags":[]},
                {"type":"local","dst":"198.18.0.7","table":"local","dev":"dummy0","flags":[]}]"#,
        )
        .expect("json");
        let c = route_collisions(&bad);
        assert_eq!(
            c,
            vec![
                (
                    "198.18.0.0/24".to_string(),
                    "local 198.18.0.7 dev dummy0 table local".to_string()
                ),
                (
                    "10.231.0.0/24".to_string(),
                    "10.0.0.0/8 via 192.0.2.9 dev eth0".to_string()
                ),
            ]
        );
    }

    #[test]
    fn overlap_is_symmetric_containment() {
        let n = |a: [u8; 4], l| (Ipv4Addr::from(a), l);
        assert!(overlaps(n([10, 0, 0, 0], 8), n([10, 231, 0, 0], 24)));
        assert!(overlaps(n([10, 231, 0, 0], 24), n([10, 231, 0, 77], 32)));
        assert!(!overlaps(n([10, 231, 1, 0], 24), n([10, 231, 0, 0], 24)));
        assert!(overlaps(n([0, 0, 0, 0], 0), n([10, 231, 0, 0], 24)));
    }
}
