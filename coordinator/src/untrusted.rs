//! What an agent reports is untrusted text: a compromised host can send
//! anything in its facts and its hello. Before the coordinator keeps, logs
//! or shows any of it, each field is held to its shape (a hostname is a
//! hostname, an address an address, a version a version); a field that is
//! not is dropped (cleared) and named, so `ctl status`, events, progress
//! and logs carry only well-formed values. `ctl` escapes what it prints
//! besides (`apiary_ctl::text`).

use std::net::IpAddr;

use apiary_proto::Facts;

/// A hostname: 1-253 characters of letters, digits, '-' and '.'.
fn hostname(s: &str) -> bool {
    (1..=253).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A version or release string ("6.1.0-18-amd64", "20.10.24+dfsg1",
/// "0.1.0"): 1-128 characters of letters, digits and `. + - _ ~ :`.
pub fn version(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+-_~:".contains(&b))
}

/// An interface name (IFNAMSIZ is 16 with the NUL).
fn interface(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

/// An address, optionally with a prefix length ("10.0.0.2/24").
fn address(s: &str) -> bool {
    let (ip, len) = s.split_once('/').unwrap_or((s, "0"));
    ip.parse::<IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128)
}

/// Free text from a host (a feature's detail): control characters become
/// spaces and it is cut to `max` bytes.
fn text(s: &mut String, max: usize) -> bool {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut end = clean.len().min(max);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    let changed = clean.len() != s.len() || clean != *s || end < clean.len();
    *s = clean[..end].to_string();
    changed
}

/// One line of free text from a host (what its agent says about itself),
/// control characters made spaces, at most 512 bytes.
pub fn line(s: &str) -> String {
    let mut s = s.to_string();
    text(&mut s, 512);
    s
}

/// Holds `facts` to their shapes in place; the names of the fields that
/// were not (and are now empty or trimmed).
pub fn check_facts(facts: &mut Facts) -> Vec<&'static str> {
    let mut bad = Vec::new();
    let mut keep = |field: &mut String, ok: bool, name: &'static str| {
        if !field.is_empty() && !ok {
            field.clear();
            bad.push(name);
        }
    };
    let ok = hostname(&facts.hostname);
    keep(&mut facts.hostname, ok, "hostname");
    let ok = version(&facts.kernel_version);
    keep(&mut facts.kernel_version, ok, "kernel_version");
    let ok = version(&facts.docker_version);
    keep(&mut facts.docker_version, ok, "docker_version");
    let ok = facts.public_ip.parse::<IpAddr>().is_ok();
    keep(&mut facts.public_ip, ok, "public_ip");
    let ok = facts.private_ip.parse::<IpAddr>().is_ok();
    keep(&mut facts.private_ip, ok, "private_ip");
    let before = facts.interfaces.len();
    facts.interfaces.retain(|i| interface(&i.name));
    for i in &mut facts.interfaces {
        i.addresses.retain(|a| address(a));
    }
    if facts.interfaces.len() != before {
        bad.push("interfaces");
    }
    let before = facts.kernel_features.len();
    facts.kernel_features.retain(|k| {
        (1..=32).contains(&k.name.len())
            && k.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    });
    let mut details = false;
    for k in &mut facts.kernel_features {
        details |= text(&mut k.detail, 256);
    }
    if facts.kernel_features.len() != before || details {
        bad.push("kernel_features");
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_proto::{Interface, KernelFeature};

    fn good() -> Facts {
        Facts {
            hostname: "workerbee-1".into(),
            kernel_version: "6.1.0-18-amd64".into(),
            cgroup_version: 1,
            memory_accounting: true,
            interfaces: vec![Interface {
                name: "eth1".into(),
                addresses: vec!["10.231.0.12/24".into(), "fe80::1/64".into()],
            }],
            public_ip: "198.18.0.12".into(),
            private_ip: "10.231.0.12".into(),
            docker_version: "20.10.24+dfsg1".into(),
            kernel_features: vec![KernelFeature {
                name: "ip_vs".into(),
                available: false,
                detail: "modprobe ip_vs failed".into(),
            }],
        }
    }

    #[test]
    fn well_formed_facts_pass_unchanged() {
        let mut f = good();
        assert!(check_facts(&mut f).is_empty());
        assert_eq!(f, good());
    }

    #[test]
    fn terminal_sequences_and_forged_rows_are_dropped_and_named() {
        let mut f = good();
        f.hostname = "h\x1b]0;owned\x07".into();
        f.kernel_version = "6.1\r\nfake-node  ready".into();
        f.private_ip = "10.0.0.1\x1b[2J".into();
        f.docker_version = "20.10".into();
        f.interfaces.push(Interface {
            name: "eth\n9".into(),
            addresses: vec![],
        });
        f.interfaces[0].addresses.push("not an address".into());
        f.kernel_features[0].detail = "ok\x1b[31m".into();
        let bad = check_facts(&mut f);
        assert_eq!(
            bad,
            [
                "hostname",
                "kernel_version",
                "private_ip",
                "interfaces",
                "kernel_features"
            ]
        );
        assert_eq!(f.hostname, "");
        assert_eq!(f.kernel_version, "");
        assert_eq!(f.private_ip, "");
        assert_eq!(f.docker_version, "20.10");
        assert_eq!(f.interfaces.len(), 1);
        assert_eq!(f.interfaces[0].addresses.len(), 2);
        assert_eq!(f.kernel_features[0].detail, "ok [31m");
    }

    #[test]
    fn versions_are_versions() {
        assert!(version("0.1.0"));
        assert!(version("1:2.4.4~0bookworm"));
        assert!(!version(""));
        assert!(!version("0.1.0 \x07"));
        assert!(!version(&"9".repeat(129)));
    }
}
