//! The files in deploy/ work as they are: examples parse, systemd units verify.

use std::path::{Path, PathBuf};

use apiary_coordinator::config::{ClusterConfig, ProviderConfig};
use apiary_tests::bin_dir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

#[test]
fn example_cluster_specs_parse() {
    let manual =
        ClusterConfig::load(&repo().join("deploy/examples/manual.toml")).expect("manual.toml");
    assert_eq!(manual.provider, ProviderConfig::Manual);
    let lab = ClusterConfig::load(&repo().join("deploy/examples/lab.toml")).expect("lab.toml");
    let ProviderConfig::Lab(l) = lab.provider else {
        panic!("lab.toml is not a lab")
    };
    assert_eq!(
        l.hosts,
        ["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"]
    );
    assert_eq!(lab.listen.to_string(), "10.231.0.1:7443");
    let d = ClusterConfig::load(&repo().join("deploy/examples/digitalocean.toml"))
        .expect("digitalocean.toml");
    let ProviderConfig::DigitalOcean(d) = d.provider else {
        panic!("not digitalocean")
    };
    assert_eq!(d.hosts.len(), 4);
    assert_eq!(d.spec.region.as_deref(), Some("nyc3"));
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    let dir = tempfile::tempdir().expect("tmp");
    for unit in ["apiary-agent.service", "apiary-coordinator.service"] {
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit)).expect("unit");
        for must in [
            "NoNewPrivileges=yes",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "RestartPreventExitStatus=",
            "UMask=0077",
        ] {
            assert!(text.contains(must), "{unit} lacks {must}");
        }
        // systemd-analyze checks that ExecStart exists: point it at the built binaries.
        let local = text.replace("/usr/local/bin/", &format!("{}/", bin_dir().display()));
        std::fs::write(dir.path().join(unit), local).expect("write");
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("apiary-agent.service"))
        .arg(dir.path().join("apiary-coordinator.service"))
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let agent =
        std::fs::read_to_string(repo().join("deploy/systemd/apiary-agent.service")).expect("unit");
    assert!(
        agent.contains("RestartPreventExitStatus=64 77"),
        "a refused agent must not be restarted in a loop"
    );
}
