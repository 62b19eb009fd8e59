//! What the agent reads from its Docker engine and from commands run in
//! containers.

use apiary_agent::swarm::{OverlaySpec, nc_outcome, node_view, overlay_differences, ping_outcome};

use super::{Target, text};

pub const DOCKER_NETWORK: Target = Target {
    name: "docker_network",
    covers: "bollard's NetworkInspect (the engine's answer) → agent/src/swarm/overlay.rs: overlay_differences",
    run: docker_network,
    dict: &[
        "\"Driver\"",
        "\"Attachable\"",
        "\"Options\"",
        "\"com.docker.network.driver.mtu\"",
        "\"encrypted\"",
        "\"overlay\"",
        "\"IPAM\"",
        "\"Config\"",
        "\"Subnet\"",
    ],
    max_len: 16 << 10,
    test_mutations: 3000,
    known: None,
};

/// An existing network compared with the specs a cluster may ask for; a
/// network the spec itself describes is adopted (no differences).
fn docker_network(data: &[u8]) {
    let Ok(net) = serde_json::from_slice::<bollard::models::NetworkInspect>(data) else {
        return;
    };
    for (encrypted, mtu) in [(false, None), (true, Some(1400)), (false, Some(1500))] {
        let spec = OverlaySpec {
            name: "apiary".into(),
            attachable: true,
            encrypted,
            mtu,
        };
        let _ = overlay_differences(&spec, &net);
    }
}

pub const DOCKER_NODE: Target = Target {
    name: "docker_node",
    covers: "bollard's Node (the engine's node list) → agent/src/swarm/mod.rs: node_view",
    run: docker_node,
    dict: &[
        "\"ID\"",
        "\"Spec\"",
        "\"Role\"",
        "\"Availability\"",
        "\"Labels\"",
        "\"Status\"",
        "\"State\"",
        "\"Addr\"",
        "\"ManagerStatus\"",
        "\"Leader\"",
        "\"Reachability\"",
        "\"Description\"",
        "\"Hostname\"",
        "\"manager\"",
        "\"worker\"",
        "\"drain\"",
        "\"ready\"",
        "\"reachable\"",
    ],
    max_len: 16 << 10,
    test_mutations: 3000,
    known: None,
};

fn docker_node(data: &[u8]) {
    if let Ok(nodes) = serde_json::from_slice::<Vec<bollard::models::Node>>(data) {
        for n in nodes {
            let v = node_view(n);
            let _ = serde_json::to_string(&v);
        }
    }
}

pub const BUSYBOX_OUTPUT: Target = Target {
    name: "busybox_output",
    covers: "agent/src/swarm/overlay.rs: ping_outcome, nc_outcome (busybox ping and nc output from docker exec in a probe container)",
    run: busybox_output,
    dict: &[
        "time=",
        " ms",
        "HTTP/",
        "refused",
        "bad address",
        "unreachable",
        "packet loss",
        "timed out",
        "PING ",
        "64 bytes from ",
    ],
    max_len: 4096,
    test_mutations: 3000,
    known: None,
};

/// Byte 0 is the exit code (0, 1 or other), the rest the output.
fn busybox_output(data: &[u8]) {
    let Some((&code, out)) = data.split_first() else {
        return;
    };
    let code = match code % 3 {
        0 => 0,
        1 => 1,
        _ => i64::from(code),
    };
    let out = text(out);
    let _ = ping_outcome(code, &out);
    let _ = nc_outcome(code, &out);
}
