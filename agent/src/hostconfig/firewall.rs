//! The firewall item: one nftables table, `inet apiary`, owned by apiary
//! and replaced as a whole; nothing outside it is ever touched (no ruleset
//! flush, no other table, no iptables).
//!
//! ## Drift detection
//!
//! nft does not print a table the way it was written (`ct original
//! proto-dst { 80, 8080 }` comes back as hex, blank lines appear, another
//! nft version may print differently again), so comparing our rendered
//! text with `nft list table` would see drift where there is none. Instead
//! the table carries its own fingerprint in its comment:
//! `apiary spec=S live=L`, where S hashes the rendered rules (what we want)
//! and L hashes what nft printed right after we applied them (what that
//! looks like on this host). A check lists the table once and compares
//! both; a deleted, added or edited rule changes the listing and thus L.
//! Applying takes two transactions: the rules, then the same rules with L
//! in the comment (the comment cannot be known before nft has printed the
//! table). Both are complete tables, so the host is never half-filtered.
//!
//! The comparison uses `nft list` text rather than `nft -j`: nft 1.0.6's
//! JSON leaves out the table comment, and the text has no handles.

use std::fmt::Write as _;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use super::effects::HostEffects;
use super::report::{HostFacts, ItemReport, Outcome, unified_diff};
use apiary_api::hostconfig::{FirewallPolicy, IfName};

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "apiary";
const ITEM: &str = "firewall";
const COMMENT_PREFIX: &str = "apiary spec=";
/// Before the filter priority (0) that Docker's iptables(-nft) chains and
/// most distribution firewalls use: our drops happen first, and our accepts
/// decide nothing for them (an accept only ends *this* base chain; the
/// packet still meets every other table's chains).
const PRIORITY: &str = "filter - 10";
/// Where clouds serve instance metadata and user_data.
pub const METADATA_ADDRESS: &str = "169.254.169.254";
const SWARM_TCP: &str = "{ 2377, 7946 }";
const SWARM_UDP: &str = "{ 4789, 7946 }";

/// The interfaces the rules name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interfaces {
    pub public: IfName,
    /// When known, cluster ports are accepted only when arriving on it, so a
    /// container on a bridge cannot reach them by spoofing a private source.
    pub private: Option<IfName>,
}

/// The policy's interface names, or those the facts show: the private one
/// holds an address inside `private_cidr` (not merely an RFC 1918 one:
/// a DigitalOcean public interface has a 10.x anchor address too), the
/// public one holds the public address.
pub fn resolve_interfaces(
    policy: &FirewallPolicy,
    facts: &HostFacts,
) -> Result<Interfaces, String> {
    let holding = |want: &dyn Fn(&IpAddr) -> bool| {
        facts
            .interfaces
            .iter()
            .find(|(_, addrs)| addrs.iter().any(want))
            .map(|(name, _)| name.as_str())
    };
    let private = match policy.private_interface() {
        Some(p) => Some(p.clone()),
        None => holding(&|ip| policy.private_cidr().contains(*ip))
            .map(IfName::parse)
            .transpose()
            .map_err(|e| format!("the private interface found in the facts: {e}"))?,
    };
    let public = match policy.public_interface() {
        Some(p) => p.clone(),
        None => {
            let name = facts
                .public_ip
                .and_then(|pub_ip| holding(&|ip| *ip == pub_ip))
                .filter(|n| private.as_ref().is_none_or(|p| p.as_str() != *n))
                .ok_or_else(|| {
                    "cannot tell the public interface (no public address in the facts); set firewall.public_interface".to_string()
                })?;
            IfName::parse(name)
                .map_err(|e| format!("the public interface found in the facts: {e}"))?
        }
    };
    if Some(&public) == private.as_ref() {
        return Err(format!(
            "{public} would be both the public and the private interface; set firewall.public_interface and firewall.private_interface"
        ));
    }
    Ok(Interfaces { public, private })
}

/// The `table inet apiary { ... }` definition, in the layout nft prints
/// (tabs, a blank line between chains) so diffs against `nft list` show
/// only real differences.
pub fn render_table(policy: &FirewallPolicy, ifs: &Interfaces, comment: Option<&str>) -> String {
    let public = format!("iifname \"{}\"", ifs.public);
    let from_private = {
        let saddr = if policy.private_cidr().is_ipv4() {
            "ip saddr"
        } else {
            "ip6 saddr"
        };
        match &ifs.private {
            Some(p) => format!("iifname \"{p}\" {saddr} {}", policy.private_cidr()),
            None => format!("{saddr} {}", policy.private_cidr()),
        }
    };
    let mut input: Vec<(String, &str)> = vec![
        ("iifname \"lo\" accept".into(), "loopback"),
        ("ct state established,related accept".into(), "replies"),
        ("meta l4proto { icmp, ipv6-icmp } accept".into(), "icmp"),
        (
            format!("{public} tcp dport {} accept", policy.ssh_port()),
            "ssh",
        ),
    ];
    if policy.coordinator_port() != policy.ssh_port() {
        input.push((
            format!("{public} tcp dport {} accept", policy.coordinator_port()),
            "coordinator",
        ));
    }
    input.push((format!("{public} drop"), "public side closed"));
    input.push((
        format!("{from_private} tcp dport {SWARM_TCP} accept"),
        "swarm tcp from the private network",
    ));
    input.push((
        format!("{from_private} udp dport {SWARM_UDP} accept"),
        "swarm udp from the private network",
    ));
    if policy.encrypted_overlay() {
        input.push((
            format!("{from_private} meta l4proto esp accept"),
            "encrypted overlay from the private network",
        ));
    }
    input.push((
        format!("tcp dport {SWARM_TCP} drop"),
        "swarm tcp only from the private network",
    ));
    input.push((
        format!("udp dport {SWARM_UDP} drop"),
        "swarm udp only from the private network",
    ));
    if policy.encrypted_overlay() {
        input.push((
            "meta l4proto esp drop".into(),
            "esp only from the private network",
        ));
    }

    // Docker's published ports (the DOCKER-USER path). Docker DNATs a
    // published port in prerouting, so the packet reaches the container
    // through the *forward* hook, never input: the public default deny
    // above does not see it. By the time forward runs, `tcp dport` is
    // already the container's port (80), not the published one (8080);
    // conntrack still has the original destination, so `ct status dnat`
    // picks exactly the DNAT'ed (published) traffic and `ct original
    // proto-dst` the port the client actually addressed. Swarm's ingress
    // mesh is covered the same way (DNAT to the ingress sandbox). Anything
    // else arriving on the public side to be forwarded is dropped too:
    // containers are not routable from the public side.
    let mut forward: Vec<(String, String)> = vec![
        // A cloud's metadata service (DigitalOcean's, AWS's, GCP's: all at
        // this link-local address) answers whoever asks from the host, and
        // it serves the droplet's user_data, join token included. The host
        // itself may ask (input/output hooks, untouched); a container's
        // packets to it are forwarded, from Docker's bridges and from the
        // overlay alike (overlay tasks leave through docker_gwbridge), so
        // one forward rule stops every container, whatever its network.
        (
            format!("ip daddr {METADATA_ADDRESS} drop"),
            "containers never reach the metadata service".into(),
        ),
        (
            format!("{public} ct state established,related accept"),
            "replies to containers".into(),
        ),
    ];
    for port in policy.allow_public_tcp() {
        // One rule per port: nft 1.0.6 prints a set of proto-dst values as
        // hex, and a single value reads back as written.
        forward.push((
            format!("{public} meta l4proto tcp ct status dnat ct original proto-dst {port} accept"),
            format!("published port {port} allowed"),
        ));
    }
    forward.push((
        format!("{public} drop"),
        "published ports closed to the public side".into(),
    ));

    let mut t = String::new();
    let _ = writeln!(t, "table {FAMILY} {TABLE} {{");
    if let Some(c) = comment {
        let _ = writeln!(t, "\tcomment \"{c}\"");
    }
    let chain = |t: &mut String, name: &str, hook: &str, rules: &[(String, String)]| {
        let _ = writeln!(t, "\tchain {name} {{");
        let _ = writeln!(
            t,
            "\t\ttype filter hook {hook} priority {PRIORITY}; policy accept;"
        );
        for (rule, why) in rules {
            let _ = writeln!(t, "\t\t{rule} comment \"{why}\"");
        }
        let _ = writeln!(t, "\t}}");
    };
    let input: Vec<(String, String)> = input.into_iter().map(|(r, c)| (r, c.to_string())).collect();
    chain(&mut t, "input", "input", &input);
    t.push('\n');
    chain(&mut t, "forward", "forward", &forward);
    t.push_str("}\n");
    t
}

/// One nft transaction that replaces our table: `table` creates it if
/// missing (so `delete` cannot fail), `delete` drops the old one, then the
/// new definition. nft applies the file atomically: on any error the old
/// table stays as it was. (`destroy table` would be shorter but needs nft
/// 1.0.8; Debian 12 has 1.0.6.)
pub fn script(table_text: &str) -> String {
    format!("table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n{table_text}")
}

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

fn is_our_comment(line: &str) -> bool {
    line.trim_start()
        .starts_with(&format!("comment \"{COMMENT_PREFIX}"))
}

/// The listing without our fingerprint comment.
fn without_comment(listing: &str) -> String {
    listing
        .lines()
        .filter(|l| !is_our_comment(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `(spec, live)` from `comment "apiary spec=S live=L"`.
fn fingerprint_of(listing: &str) -> Option<(String, Option<String>)> {
    let line = listing.lines().find(|l| is_our_comment(l))?;
    let inner = line.trim().strip_prefix("comment \"")?.strip_suffix('"')?;
    let mut spec = None;
    let mut live = None;
    for word in inner.split_whitespace().skip(1) {
        if let Some(v) = word.strip_prefix("spec=") {
            spec = Some(v.to_string());
        } else if let Some(v) = word.strip_prefix("live=") {
            live = Some(v.to_string());
        }
    }
    spec.map(|s| (s, live))
}

/// Reads back, compares, and replaces the table only when it differs.
pub fn apply_firewall(
    policy: &FirewallPolicy,
    facts: &HostFacts,
    effects: &dyn HostEffects,
    dry_run: bool,
) -> ItemReport {
    // Fatal for this item: without the public interface there is no rule to
    // write, and guessing could close the wrong side.
    let ifs = match resolve_interfaces(policy, facts) {
        Ok(i) => i,
        Err(why) => return ItemReport::failed(ITEM, why),
    };
    let rules = render_table(policy, &ifs, None);
    let spec = short_hash(&rules);
    let live = match effects.nft_list_table(FAMILY, TABLE) {
        Ok(l) => l,
        Err(e) => {
            return ItemReport::failed(ITEM, format!("cannot read table {FAMILY} {TABLE}: {e}"));
        }
    };
    if let Some(listing) = &live
        && let Some((s, Some(l))) = fingerprint_of(listing)
        && s == spec
        && l == short_hash(&without_comment(listing))
    {
        return ItemReport::ok(ITEM);
    }
    let label = format!("table {FAMILY} {TABLE}");
    let mut diff = unified_diff(
        &label,
        &without_comment(live.as_deref().unwrap_or_default()),
        &rules,
    );
    if diff.is_empty() {
        diff = format!("{label}: rules as desired, but its fingerprint comment differs");
    }
    if dry_run {
        return ItemReport::changed(ITEM, diff);
    }
    let first = render_table(policy, &ifs, Some(&format!("{COMMENT_PREFIX}{spec}")));
    if let Err(e) = effects.nft_apply(&script(&first)) {
        return ItemReport::failed(
            ITEM,
            format!("nft refused apiary's table ({e}); the previous table, if any, is unchanged"),
        )
        .with_diff(Some(diff));
    }
    let fingerprint = |what: &str| -> Result<String, String> {
        match effects.nft_list_table(FAMILY, TABLE) {
            Ok(Some(l)) => Ok(short_hash(&without_comment(&l))),
            Ok(None) => Err(format!(
                "table {FAMILY} {TABLE} vanished right after {what}"
            )),
            Err(e) => Err(format!(
                "cannot read table {FAMILY} {TABLE} back after {what}: {e}"
            )),
        }
    };
    let result = fingerprint("applying it").and_then(|l| {
        let second = render_table(
            policy,
            &ifs,
            Some(&format!("{COMMENT_PREFIX}{spec} live={l}")),
        );
        effects
            .nft_apply(&script(&second))
            .map_err(|e| format!("nft refused apiary's table the second time ({e})"))?;
        let again = fingerprint("fingerprinting it")?;
        if again == l {
            Ok(())
        } else {
            Err("nft printed the same table differently twice; drift cannot be told from noise on this nft version".into())
        }
    });
    match result {
        // The rules are in place either way; only the fingerprint failed.
        Ok(()) => ItemReport::new(ITEM, Outcome::Changed, Some(diff)),
        Err(why) => {
            ItemReport::failed(ITEM, format!("rules applied, but {why}")).with_diff(Some(diff))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostconfig::memory::MemoryEffects;
    use apiary_api::hostconfig::FirewallSpec;

    fn policy(edit: impl FnOnce(&mut FirewallSpec)) -> FirewallPolicy {
        let mut s = FirewallSpec::new("10.231.0.0/24");
        edit(&mut s);
        FirewallPolicy::new(&s).expect("valid")
    }

    fn facts() -> HostFacts {
        HostFacts {
            interfaces: vec![
                ("docker0".into(), vec!["172.17.0.1".parse().expect("ip")]),
                ("eth0".into(), vec!["10.231.0.11".parse().expect("ip")]),
                ("eth1".into(), vec!["198.18.0.11".parse().expect("ip")]),
            ],
            public_ip: Some("198.18.0.11".parse().expect("ip")),
            ..HostFacts::default()
        }
    }

    fn table(m: &MemoryEffects) -> Option<String> {
        m.state().nft_tables.get("inet apiary").cloned()
    }

    #[test]
    fn interfaces_from_policy_or_facts() {
        let ifs = resolve_interfaces(&policy(|_| {}), &facts()).expect("detected");
        assert_eq!(ifs.public.as_str(), "eth1");
        assert_eq!(ifs.private.as_ref().map(IfName::as_str), Some("eth0"));
        let named = policy(|s| s.public_interface = Some("ens3".into()));
        assert_eq!(
            resolve_interfaces(&named, &facts())
                .expect("named")
                .public
                .as_str(),
            "ens3"
        );
        let no_public = HostFacts {
            public_ip: None,
            ..facts()
        };
        let e = resolve_interfaces(&policy(|_| {}), &no_public).expect_err("unknown");
        assert!(e.contains("firewall.public_interface"), "{e}");
        let clash = policy(|s| s.public_interface = Some("eth0".into()));
        assert!(resolve_interfaces(&clash, &facts()).is_err());
    }

    #[test]
    fn renders_the_policy() {
        let p = policy(|s| {
            s.allow_public_tcp = vec![8443, 8080];
            s.encrypted_overlay = true;
        });
        let ifs = resolve_interfaces(&p, &facts()).expect("ifs");
        let t = render_table(&p, &ifs, Some("apiary spec=x"));
        for want in [
            "table inet apiary {\n\tcomment \"apiary spec=x\"\n\tchain input {\n",
            "\t\ttype filter hook input priority filter - 10; policy accept;\n",
            "\t\tiifname \"eth1\" tcp dport 22 accept comment \"ssh\"\n",
            "\t\tiifname \"eth1\" tcp dport 7443 accept comment \"coordinator\"\n",
            "\t\tiifname \"eth1\" drop comment \"public side closed\"\n",
            "\t\tiifname \"eth0\" ip saddr 10.231.0.0/24 tcp dport { 2377, 7946 } accept",
            "\t\tiifname \"eth0\" ip saddr 10.231.0.0/24 udp dport { 4789, 7946 } accept",
            "\t\tiifname \"eth0\" ip saddr 10.231.0.0/24 meta l4proto esp accept",
            "\t\tmeta l4proto esp drop",
            // First in forward: no accept before it can let a container through.
            "\tchain forward {\n\t\ttype filter hook forward priority filter - 10; policy accept;\n\t\tip daddr 169.254.169.254 drop comment \"containers never reach the metadata service\"\n",
            "ct original proto-dst 8080 accept comment \"published port 8080 allowed\"\n\t\tiifname \"eth1\" meta l4proto tcp ct status dnat ct original proto-dst 8443 accept",
            "\t\tiifname \"eth1\" drop comment \"published ports closed to the public side\"\n\t}\n}\n",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        // Unencrypted: no ESP rules at all.
        let plain = render_table(&policy(|_| {}), &ifs, None);
        assert!(!plain.contains("esp") && !plain.contains("comment \"apiary"));
        // IPv6 private network, no private interface known.
        let v6 = policy(|s| s.private_cidr = "fd00:a::/64".into());
        let t6 = render_table(
            &v6,
            &Interfaces {
                public: IfName::parse("eth1").expect("if"),
                private: None,
            },
            None,
        );
        assert!(
            t6.contains("\t\tip6 saddr fd00:a::/64 tcp dport { 2377, 7946 } accept"),
            "{t6}"
        );
        assert!(
            script(&t6).starts_with(
                "table inet apiary {}\ndelete table inet apiary\ntable inet apiary {\n"
            )
        );
    }

    #[test]
    fn first_apply_changes_second_is_ok_and_a_deleted_rule_is_restored() {
        let m = MemoryEffects::new();
        let p = policy(|s| s.allow_public_tcp = vec![8080]);
        let first = apply_firewall(&p, &facts(), &m, false);
        assert_eq!(first.outcome, Outcome::Changed);
        assert!(
            first
                .diff
                .as_deref()
                .is_some_and(|d| d.contains("+\t\tiifname \"eth1\" tcp dport 22 accept")),
            "{first:?}"
        );
        let applied = table(&m).expect("table");
        assert!(fingerprint_of(&applied).is_some_and(|(_, l)| l.is_some()));
        assert_eq!(m.log(), ["nft_apply", "nft_apply"]);

        let second = apply_firewall(&p, &facts(), &m, false);
        assert_eq!((second.outcome, second.diff), (Outcome::Ok, None));
        assert_eq!(m.log().len(), 2, "a check writes nothing");

        assert_eq!(m.nft_delete_rules("inet apiary", "comment \"ssh\""), 1);
        let repaired = apply_firewall(&p, &facts(), &m, false);
        assert_eq!(repaired.outcome, Outcome::Changed);
        let d = repaired.diff.expect("diff");
        assert!(
            d.contains("+\t\tiifname \"eth1\" tcp dport 22 accept comment \"ssh\""),
            "{d}"
        );
        assert_eq!(table(&m), Some(applied), "restored exactly");
    }

    #[test]
    fn an_added_rule_and_a_policy_change_are_drift_too() {
        let m = MemoryEffects::new();
        let p = policy(|_| {});
        apply_firewall(&p, &facts(), &m, false);
        let applied = table(&m).expect("table");
        m.state().nft_tables.insert(
            "inet apiary".into(),
            applied.replace(
                "\t\tiifname \"lo\" accept",
                "\t\ttcp dport 2375 accept\n\t\tiifname \"lo\" accept",
            ),
        );
        assert_eq!(
            apply_firewall(&p, &facts(), &m, false).outcome,
            Outcome::Changed
        );
        assert_eq!(table(&m), Some(applied.clone()));
        // A new desired policy (port allowed) is a change even if the table is intact.
        let p2 = policy(|s| s.allow_public_tcp = vec![9000]);
        let r = apply_firewall(&p2, &facts(), &m, false);
        assert!(r.diff.expect("diff").contains("+\t\tiifname \"eth1\" meta l4proto tcp ct status dnat ct original proto-dst 9000 accept"));
    }

    #[test]
    fn dry_run_changes_nothing_and_other_tables_are_left_alone() {
        let m = MemoryEffects::new();
        let other = "table inet other {\n\tchain c {\n\t}\n}\n";
        m.state()
            .nft_tables
            .insert("inet other".into(), other.into());
        let before = m.state().clone();
        let dry = apply_firewall(&policy(|_| {}), &facts(), &m, true);
        assert_eq!(dry.outcome, Outcome::Changed);
        assert!(dry.diff.is_some());
        assert_eq!(*m.state(), before);
        apply_firewall(&policy(|_| {}), &facts(), &m, false);
        assert_eq!(m.state().nft_tables["inet other"], other);
    }

    #[test]
    fn failures_keep_the_old_table_and_say_why() {
        let m = MemoryEffects::new();
        m.fail(
            "nft_apply",
            "Error: Could not process rule: Operation not supported",
        );
        let r = apply_firewall(&policy(|_| {}), &facts(), &m, false);
        assert!(
            matches!(&r.outcome, Outcome::Failed(w) if w.contains("Operation not supported") && w.contains("unchanged")),
            "{r:?}"
        );
        assert!(table(&m).is_none());
        m.heal("nft_apply");
        m.fail("nft_list_table", "nft: command not found");
        let r = apply_firewall(&policy(|_| {}), &facts(), &m, false);
        assert!(matches!(&r.outcome, Outcome::Failed(w) if w.contains("command not found")));
        let no_public = HostFacts {
            public_ip: None,
            ..facts()
        };
        m.heal("nft_list_table");
        assert!(apply_firewall(&policy(|_| {}), &no_public, &m, false).is_failed());
    }
}
