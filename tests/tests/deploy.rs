//! The files in deploy/ work as they are: examples parse, systemd units
//! verify, install.sh installs binaries, units, completions and man pages.

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
    // Its advertise is derived (`coordinator up`, `serve --advertise`).
    let d = ClusterConfig::load_with(
        &repo().join("deploy/examples/digitalocean.toml"),
        Some("10.10.0.2:7443".parse().expect("addr")),
    )
    .expect("digitalocean.toml");
    let ProviderConfig::DigitalOcean(d) = d.provider else {
        panic!("not digitalocean")
    };
    assert_eq!(d.hosts.len(), 4);
    assert_eq!(d.spec.region.as_deref(), Some("nyc3"));
    // The RethinkDB lab needs its image archive beside the project; without
    // it the spec is refused, naming the key and the file.
    let rethinkdb = ClusterConfig::load(&repo().join("deploy/examples/lab-rethinkdb.toml"));
    if repo()
        .join("../shared/rethinkdb/rethinkdb-2.4.4.tar")
        .exists()
    {
        let c = rethinkdb.expect("lab-rethinkdb.toml");
        let db = c.swarm.and_then(|s| s.database).expect("a database");
        assert_eq!(db.kind.as_str(), "rethinkdb");
    } else {
        let e = rethinkdb.expect_err("no archive").to_string();
        assert!(
            e.contains("image_archive") && e.contains("rethinkdb-2.4.4.tar"),
            "{e}"
        );
    }
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

#[test]
fn install_sh_installs_man_pages_and_completions_for_every_program() {
    let root = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new("bash")
        .arg(repo().join("deploy/install.sh"))
        .arg("all")
        .env("DESTDIR", root.path())
        .env("APIARY_BIN", bin_dir())
        .output()
        .expect("bash deploy/install.sh");
    assert!(
        out.status.success(),
        "install.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let file = |path: &str| {
        let p = root.path().join(path);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(!text.trim().is_empty(), "{path} is empty");
        text
    };
    for b in ["agent", "coordinator", "ctl"] {
        assert!(root.path().join("usr/local/bin").join(b).exists(), "{b}");
        file(&format!("usr/local/share/man/man1/{b}.1"));
        file(&format!("usr/share/bash-completion/completions/{b}"));
        file(&format!("usr/share/zsh/vendor-completions/_{b}"));
        file(&format!("usr/share/fish/vendor_completions.d/{b}.fish"));
    }
    for page in ["coordinator-serve", "ctl-hosts-apply", "ctl-status"] {
        assert!(file(&format!("usr/local/share/man/man1/{page}.1")).contains(".TH"));
    }
    file("etc/systemd/system/apiary-agent.service");
    file("etc/systemd/system/apiary-coordinator.service");
}
