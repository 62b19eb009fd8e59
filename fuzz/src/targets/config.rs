//! Configuration files and the host configuration the coordinator sends.

use std::collections::BTreeMap;
use std::path::PathBuf;

use apiary_agent::config::{AgentConfig, AgentFile};
use apiary_agent::hostconfig::{
    self, FeatureFact, FeatureState, GrubMode, HostConfig, HostConfigSpec, HostEffects, HostFacts,
    MemoryEffects, Outcome,
};
use apiary_api::tunnel::AllowList;
use apiary_coordinator::config::{ClusterConfig, ProviderConfig};

use super::{Target, scratch_dir, split_all, text};

pub const CLUSTER_TOML: Target = Target {
    name: "cluster_toml",
    covers: "coordinator/src/config.rs: ClusterConfig::parse (with the [digitalocean] section's DigitalOceanSpec::validate)",
    run: cluster_toml,
    dict: &[
        "[cluster]\n",
        "[coordinator]\n",
        "[provider]\n",
        "[digitalocean]\n",
        "[host]\n",
        "[host.firewall]\n",
        "[host.sysctls]\n",
        "[host.daemon_json]\n",
        "[swarm]\n",
        "[database]\n",
        "[tunnel]\n",
        "name = ",
        "kind = ",
        "hosts = ",
        "names = ",
        "listen = ",
        "advertise = ",
        "heartbeat_interval = ",
        "\"lab\"",
        "\"manual\"",
        "\"digitalocean\"",
        "\"etcd\"",
        "\"rethinkdb\"",
        "servers = ",
        "encrypted = true",
        "allow = ",
        "\"1m\"",
        "\"24h\"",
        "\"never\"",
        "\"0.0.0.0:7443\"",
        "\"10.231.0.0/24\"",
    ],
    max_len: 16 << 10,
    test_mutations: 2000,
    known: None,
};

thread_local! {
    static CONFIG_DIR: tempfile::TempDir = scratch_dir();
}

/// What the coordinator accepts it can use: the host configuration it
/// sends is one every agent accepts, the tunnel allow-list it writes into
/// agent.toml parses there, and a DigitalOcean section validates or says
/// why.
fn cluster_toml(data: &[u8]) {
    let path = CONFIG_DIR.with(|d| d.path().join("cluster.toml"));
    let Ok(config) = ClusterConfig::parse(&path, &text(data)) else {
        return;
    };
    if let Some(host) = &config.host {
        let json = serde_json::to_string(host.spec())
            .unwrap_or_else(|e| panic!("an accepted [host] does not encode: {e}"));
        let spec: HostConfigSpec = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("agents refuse the [host] JSON the coordinator sends: {e}"));
        if let Err(e) = HostConfig::new(spec) {
            panic!("agents refuse the [host] the coordinator accepted: {e}");
        }
    }
    if let Err(e) = AllowList::parse(&config.tunnel_allow) {
        panic!("[tunnel] allow was accepted but agents refuse it: {e}");
    }
    if let ProviderConfig::DigitalOcean(d) = &config.provider {
        let env = |k: &str| {
            (k == apiary_digitalocean::TOKEN_VAR).then(|| "dop_v1_fuzz0123456789abcdef".to_string())
        };
        let _ = d.spec.validate(env);
    }
}

pub const AGENT_TOML: Target = Target {
    name: "agent_toml",
    covers: "agent/src/config.rs: AgentFile::load, AgentConfig::merge (tunnel_allow through AllowList::parse, private_cidr through Cidr::parse)",
    run: agent_toml,
    dict: &[
        "coordinator = ",
        "token = ",
        "join_token = ",
        "state_dir = ",
        "name = ",
        "node_name = ",
        "ca_cert = ",
        "docker_socket = ",
        "public_interface = ",
        "private_interface = ",
        "private_cidr = ",
        "root_prefix = ",
        "engine_restart = ",
        "modprobe = ",
        "update_grub = ",
        "tunnel_allow = ",
        "\"10.124.0.0/20\"",
        "\"::1/128\"",
    ],
    max_len: 8 << 10,
    test_mutations: 2000,
    known: None,
};

/// `data` as agent.toml, read as the agent reads it, then merged over
/// flags (none, and the same file as flags).
fn agent_toml(data: &[u8]) {
    let path: PathBuf = CONFIG_DIR.with(|d| d.path().join("agent.toml"));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(file) = AgentFile::load(&path) else {
        return;
    };
    let _ = AgentConfig::merge(AgentFile::default(), file);
    if let Ok(again) = AgentFile::load(&path) {
        let flags = AgentFile::load(&path).unwrap_or_default();
        let _ = AgentConfig::merge(flags, again);
    }
}

pub const HOST_CONFIG: Target = Target {
    name: "host_config",
    covers: "agent/src/host_runner.rs: the ApplyHostConfig spec (serde_json → HostConfigSpec); api/src/hostconfig.rs: HostConfig::new; agent/src/hostconfig/mod.rs: apply (every item) on MemoryEffects",
    run: host_config,
    dict: &[
        "\"sysctls\"",
        "\"firewall\"",
        "\"daemon_json\"",
        "\"grub\"",
        "\"manage_modules\"",
        "\"private_cidr\"",
        "\"allow_public_tcp\"",
        "\"public_interface\"",
        "\"private_interface\"",
        "\"ssh_port\"",
        "\"coordinator_port\"",
        "\"encrypted_overlay\"",
        "\"net.ipv4.ip_forward\"",
        "\"vm.max_map_count\"",
        "\"auto\"",
        "\"off\"",
        "\"log-opts\"",
    ],
    max_len: 4 << 10,
    test_mutations: 800,
    known: None,
};

fn host_facts(memory_accounting: bool) -> HostFacts {
    let feature = |name: &str, state| FeatureFact {
        name: name.into(),
        state,
        detail: String::new(),
    };
    HostFacts {
        kernel_release: "6.1.0-18-amd64".into(),
        cgroup_version: 1,
        memory_accounting,
        interfaces: vec![
            ("eth0".into(), vec![[10, 231, 0, 11].into()]),
            ("eth1".into(), vec![[198, 18, 0, 11].into()]),
        ],
        public_ip: Some([198, 18, 0, 11].into()),
        kernel_features: vec![
            feature("vxlan", FeatureState::Module),
            feature("overlay", FeatureState::Loaded),
            feature("br_netfilter", FeatureState::Module),
            feature("ip_vs", FeatureState::Module),
        ],
    }
}

/// A spec the agent accepts is applied (dry run, then for real) to a
/// fresh Debian host; applied again after the reboot it asked for, it
/// changes nothing (no item drifts by itself).
fn host_config(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<HostConfigSpec>(data) else {
        return;
    };
    let Ok(config) = HostConfig::new(spec) else {
        return;
    };
    let host = MemoryEffects::debian_host();
    let _ = hostconfig::apply(&config, &host, &host_facts(false), true);
    let _ = hostconfig::apply(&config, &host, &host_facts(false), false);
    let second = hostconfig::apply(&config, &host, &host_facts(true), false);
    let drifted: Vec<&str> = second
        .iter()
        .filter(|r| r.outcome == Outcome::Changed)
        .map(|r| r.item.as_str())
        .collect();
    assert!(
        drifted.is_empty(),
        "applied twice, these items changed again: {drifted:?}"
    );
}

pub const HOST_FILES: Target = Target {
    name: "host_files",
    covers: "agent/src/hostconfig/grub.rs: ensure_args, cmdline_args, apply_grub; hostconfig/kernel.rs: parse_release, check_kernel_version; hostconfig/daemon_json.rs: apply_daemon_json; agent/src/facts.rs: feature, memory_accounting (files the agent reads from its host)",
    run: host_files,
    dict: &[
        "GRUB_CMDLINE_LINUX=",
        "\"",
        "'",
        "cgroup_enable=memory",
        "cgroup_disable=memory",
        "swapaccount=0",
        "CONFIG_VXLAN=",
        "/vxlan.ko",
        "memory",
        "@@\n",
    ],
    max_len: 8 << 10,
    test_mutations: 1500,
    known: None,
};

/// Sections split by `@@` lines: /etc/default/grub, `uname -r`,
/// daemon.json, the kernel config, module lists, /proc/cgroups. GRUB's
/// fix is a fixed point (fixing a fixed file changes nothing), and an
/// existing daemon.json merged once stays merged.
fn host_files(data: &[u8]) {
    let parts = split_all(data, b"\n@@\n");
    let part = |i: usize| {
        parts
            .get(i)
            .map(|p| text(p).into_owned())
            .unwrap_or_default()
    };
    let grub = part(0);
    let _ = hostconfig::grub::cmdline_args(&grub);
    if let Some(fixed) = hostconfig::grub::ensure_args(&grub)
        && let Some(again) = hostconfig::grub::ensure_args(&fixed)
    {
        panic!("GRUB's fix is not a fixed point: {fixed:?} becomes {again:?}");
    }
    let release = part(1);
    let _ = hostconfig::kernel::parse_release(&release);
    let _ = hostconfig::kernel::check_kernel_version(&release);
    let host = MemoryEffects::debian_host();
    let _ = host.write_file(hostconfig::grub::GRUB_DEFAULTS, &grub);
    let _ = hostconfig::grub::apply_grub(GrubMode::Auto, &host_facts(false), &host, false);
    let _ = host.write_file(hostconfig::daemon_json::DAEMON_JSON, &part(2));
    let desired: serde_json::Map<String, serde_json::Value> = BTreeMap::from([
        ("log-driver".to_string(), serde_json::json!("json-file")),
        (
            "log-opts".to_string(),
            serde_json::json!({"max-size": "10m"}),
        ),
    ])
    .into_iter()
    .collect();
    let first = hostconfig::daemon_json::apply_daemon_json(&desired, &host, false);
    if first.outcome == Outcome::Changed {
        let second = hostconfig::daemon_json::apply_daemon_json(&desired, &host, false);
        assert!(
            second.outcome == Outcome::Ok,
            "daemon.json merged once changes again: {second:?}"
        );
    }
    let config = part(3);
    for (module, symbol) in apiary_agent::facts::REQUIRED_FEATURES {
        let _ = apiary_agent::facts::feature(module, symbol, false, Some(&config), &part(4));
    }
    let cgroups = part(5);
    for version in [1, 2] {
        let _ = apiary_agent::facts::memory_accounting(version, Some(&cgroups), Some(&cgroups));
    }
}
