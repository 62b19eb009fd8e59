//! Small text parsers at trust boundaries: names, reachability probes
//! from the network, and text shown to an operator.

use apiary_api::names::{ClusterName, MAX_CLUSTER_NAME, MAX_NODE_NAME, NameError, NodeName};

use super::{Target, text};

pub const NAMES: Target = Target {
    name: "names",
    covers: "api/src/names.rs: NodeName::parse, ClusterName::parse and their serde form (enrollment names, cluster.toml); digitalocean/src/config.rs: HostName::parse, TagName::parse",
    run: names,
    dict: &["-", "queenbee", "workerbee-1", "\"", "ä"],
    max_len: 512,
    test_mutations: 3000,
    known: None,
};

/// The rule holds for what is accepted (a lowercase DNS label), and the
/// serde form accepts exactly what `parse` does.
fn names(data: &[u8]) {
    let s = text(data);
    let label = |n: &str, max: usize| {
        (1..=max).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-')
            && !n.ends_with('-')
    };
    let node: Result<NodeName, NameError> = NodeName::parse(&s);
    assert_eq!(node.is_ok(), label(&s, MAX_NODE_NAME), "node name {s:?}");
    let cluster = ClusterName::parse(&s);
    assert_eq!(
        cluster.is_ok(),
        label(&s, MAX_CLUSTER_NAME),
        "cluster name {s:?}"
    );
    let json = serde_json::to_string(&s).unwrap_or_default();
    let via_serde: Result<NodeName, _> = serde_json::from_str(&json);
    assert_eq!(
        via_serde.is_ok(),
        node.is_ok(),
        "serde and parse disagree on {s:?}"
    );
    if let Ok(n) = node {
        assert_eq!(n.as_str(), s, "a name changed when parsed");
    }
    let _ = apiary_digitalocean::HostName::parse(&s);
    let _ = apiary_digitalocean::TagName::parse(&s);
}

pub const REACH_PROBE: Target = Target {
    name: "reach_probe",
    covers: "agent/src/reach/mod.rs: echo_for, is_echo (TCP and UDP responders, anyone on the network); agent/src/reach/esp.rs: parse (raw ESP packets)",
    run: reach_probe,
    dict: &[
        "APIARY-PROBE ",
        "APIARY-ECHO ",
        " ",
        "0123456789abcdef",
        "\r\n",
    ],
    max_len: 2048,
    test_mutations: 3000,
    known: None,
};

/// A responder answers only well-formed challenges, and never with more
/// bytes than it was sent (no amplification for a spoofed source); its
/// echo is one the prober recognises.
fn reach_probe(data: &[u8]) {
    use apiary_agent::reach::{echo_for, is_echo, parse_esp};
    if let Some(echo) = echo_for(data) {
        assert!(
            echo.len() < data.len(),
            "an echo of {} bytes for a challenge of {}",
            echo.len(),
            data.len()
        );
        let s = std::str::from_utf8(data).unwrap_or_default();
        let mut words = s.trim_end_matches(['\r', '\n']).split(' ').skip(1);
        let (node, nonce) = (
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        );
        let nonce = u64::from_str_radix(nonce, 16).unwrap_or_default();
        assert!(
            is_echo(&echo, node, nonce),
            "the prober does not recognise the echo"
        );
        assert!(echo_for(&echo).is_none(), "an echo is answered");
    }
    let _ = is_echo(data, "workerbee-1", 0x0123_4567_89ab_cdef);
    if let Some((_, payload)) = parse_esp(data) {
        let _ = echo_for(payload);
    }
}

pub const CTL_TEXT: Target = Target {
    name: "ctl_text",
    covers: "ctl/src/text.rs: shown (host-supplied text before it reaches the operator's terminal)",
    run: ctl_text,
    dict: &[
        "\u{1b}]0;",
        "\u{7}",
        "\u{202e}",
        "\u{2066}",
        "\r",
        "\u{85}",
        "\u{200f}",
    ],
    max_len: 4096,
    test_mutations: 3000,
    known: None,
};

/// Nothing that drives a terminal survives: no control character, no
/// bidi override or isolate, no direction mark.
fn ctl_text(data: &[u8]) {
    let s = text(data);
    let shown = apiary_ctl::text::shown(&s);
    let bad = shown.chars().find(|c| {
        c.is_control()
            || matches!(*c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
    });
    assert!(bad.is_none(), "{bad:?} reaches the terminal");
}
