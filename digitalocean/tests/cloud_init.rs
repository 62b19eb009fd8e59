//! The rendered user_data: valid cloud-config (checked by `cloud-init
//! schema` when Debian's cloud-init is installed, and always by a YAML and
//! key check), under the API's size limit, carrying no secret but the join
//! token.

// Tests panic on the unexpected by design.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use apiary_digitalocean::cloud_init::{
    AGENT_BINARY_PATH, AGENT_CONFIG_PATH, CA_PATH, INSTALL_RETRY_SEC, INSTALL_UNIT_NAME,
    INSTALL_UNIT_PATH, INSTALLER_PATH, SSHD_DROP_IN_PATH, UNIT_NAME, UNIT_PATH,
    install_unit_command,
};
use apiary_digitalocean::{
    AgentSource, Bootstrap, HostName, MAX_USER_DATA_BYTES, render_user_data,
};
use serde_norway::Value;

const TOKEN: &str = "APIARY-1-8f14e45fceea167a5a36dedd4bea2543a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5-0123456789abcdef0123456789abcdef01234567";
// A real-looking chain of two certificates (content is irrelevant here).
const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgIUQ2x1c3RlckNBZm9yYXBpYXJ5dGVzdDAKBggqhkjOPQQD
AjAZMRcwFQYDVQQDDA5hcGlhcnkgY2x1c3RlcjAeFw0yNjAxMDEwMDAwMDBaFw0z
-----END CERTIFICATE-----
-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgIUQ2x1c3RlckNBZm9yYXBpYXJ5dGVzdDAKBggqhkjOPQQD
-----END CERTIFICATE-----
";

/// The digest of the binary the coordinator serves.
const SUM: &str = "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592";

fn bootstrap() -> Bootstrap {
    Bootstrap::new(
        "10.20.0.2:7443",
        TOKEN,
        CA,
        AgentSource::Coordinator {
            url: "https://10.20.0.2:7444/v1/agent/linux-x86_64"
                .parse()
                .unwrap(),
            sha256: SUM.into(),
        },
    )
}

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or_else(|| panic!("no `{key}` in {v:?}"))
}

fn file<'a>(doc: &'a Value, path: &str) -> &'a Value {
    get(doc, "write_files")
        .as_sequence()
        .expect("write_files is a list")
        .iter()
        .find(|f| f.get("path").and_then(Value::as_str) == Some(path))
        .unwrap_or_else(|| panic!("no file {path}"))
}

fn packages(doc: &Value) -> Vec<&str> {
    get(doc, "packages")
        .as_sequence()
        .expect("packages list")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn runcmd(doc: &Value) -> Vec<Vec<String>> {
    get(doc, "runcmd")
        .as_sequence()
        .expect("runcmd list")
        .iter()
        .map(|c| {
            c.as_sequence()
                .expect("argv form, no shell")
                .iter()
                .map(|a| a.as_str().expect("string arg").to_owned())
                .collect()
        })
        .collect()
}

/// The install unit's text and its `ExecStart` argv.
fn install_unit(doc: &Value) -> (String, Vec<String>) {
    let unit = get(file(doc, INSTALL_UNIT_PATH), "content")
        .as_str()
        .expect("unit text")
        .to_owned();
    let argv = install_unit_command(&unit).expect("an ExecStart line");
    (unit, argv)
}

/// Runs `cloud-init schema` when cloud-init is installed (Debian's
/// `cloud-init` package; scripts/setup-host installs it). `None`, with the
/// reason printed, when it is not.
fn cloud_init_schema(user_data: &str) -> Option<(bool, String)> {
    let available = Command::new("cloud-init")
        .args(["schema", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!(
            "skipped: `cloud-init schema` is not available (apt-get install cloud-init, as \
             scripts/setup-host does); YAML and key checks only"
        );
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("user-data.yaml");
    std::fs::write(&path, user_data).expect("write");
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&path)
        .output()
        .expect("run cloud-init schema");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[test]
fn renders_a_valid_cloud_config_for_the_coordinator_download() {
    let ud = render_user_data(&bootstrap()).expect("render");
    assert!(ud.starts_with("#cloud-config\n"), "{ud}");
    assert!(ud.len() < MAX_USER_DATA_BYTES);

    match cloud_init_schema(&ud) {
        Some((ok, text)) => assert!(
            ok && text.contains("Valid"),
            "cloud-init schema:\n{text}\n{ud}"
        ),
        None => eprintln!("cloud-init not installed: YAML and key checks only"),
    }

    let doc: Value = serde_norway::from_str(&ud).expect("YAML");
    assert_eq!(get(&doc, "package_update").as_bool(), Some(true));
    let packages = packages(&doc);
    assert!(
        packages.contains(&"docker.io"),
        "Docker from the distribution"
    );

    let ca = file(&doc, CA_PATH);
    assert_eq!(get(ca, "content").as_str().unwrap().trim(), CA.trim());
    let agent = file(&doc, AGENT_CONFIG_PATH);
    assert_eq!(get(agent, "permissions").as_str(), Some("0600"));
    let toml: toml::Value =
        toml::from_str(get(agent, "content").as_str().unwrap()).expect("agent.toml");
    assert_eq!(toml["coordinator"].as_str(), Some("10.20.0.2:7443"));
    assert_eq!(toml["join_token"].as_str(), Some(TOKEN));
    assert_eq!(toml["state_dir"].as_str(), Some("/var/lib/apiary"));
    assert_eq!(toml["ca_cert"].as_str(), Some(CA_PATH));
    assert!(
        toml.get("node_name").is_none(),
        "shared user_data: name from the hostname"
    );
    let unit = get(file(&doc, UNIT_PATH), "content").as_str().unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/apiary-agent"));

    let (unit, install) = install_unit(&doc);
    assert_eq!(install[0], INSTALLER_PATH);
    assert_eq!(install[1], "https://10.20.0.2:7444/v1/agent/linux-x86_64");
    assert_eq!(
        install[2], "cluster-ca",
        "the download trusts only the pinned CA"
    );
    assert_eq!(install[3], SUM, "and checks the digest beyond TLS");
    assert_eq!(install, bootstrap().agent_source.install_command());
    assert!(unit.contains("Type=oneshot"), "{unit}");
    // runcmd starts the install unit and nothing else: no download, and the
    // agent is never enabled from there.
    let cmds = runcmd(&doc);
    assert_eq!(
        cmds,
        [
            vec!["systemctl", "daemon-reload"],
            vec![
                "systemctl",
                "enable",
                "--now",
                "--no-block",
                INSTALL_UNIT_NAME
            ]
        ],
    );
    let script = get(file(&doc, INSTALLER_PATH), "content").as_str().unwrap();
    // Paths are under $root, which is empty on a host (tests set it).
    assert!(
        script.contains(r#"--cacert "$root/etc/apiary/ca.pem""#)
            && script.contains("--proto '=https'")
            && script.contains(r#"root="${APIARY_INSTALL_ROOT:-}""#)
    );
    let sh = Command::new("sh")
        .arg("-n")
        .arg("-c")
        .arg(script)
        .status()
        .expect("sh");
    assert!(sh.success(), "the installer parses as sh");
}

#[test]
fn carries_no_secret_but_the_join_token() {
    let ud = render_user_data(&bootstrap()).expect("render");
    assert_eq!(
        ud.matches(TOKEN).count(),
        1,
        "the token is written once, in agent.toml"
    );
    assert!(!ud.contains("PRIVATE KEY"));
    assert!(
        !ud.contains("dop_v1_") && !ud.contains("DIGITALOCEAN"),
        "no API token"
    );
    // Every base64 blob is the CA's; nothing else key-like rides along.
    for line in ud.lines() {
        let t = line.trim();
        if t.len() >= 40
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        {
            assert!(CA.contains(t), "unexpected opaque blob: {t}");
        }
    }
    // A CA key passed by mistake is refused, not published.
    let mut b = bootstrap();
    b.ca_cert_pem =
        format!("{CA}-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n");
    let err = render_user_data(&b).unwrap_err();
    assert!(err.to_string().contains("private key"), "{err}");
}

#[test]
fn external_agent_url_with_digest_and_node_name() {
    let mut b = bootstrap();
    b.agent_source = AgentSource::Url {
        url: "https://downloads.example.com/apiary-agent-0.1.0-linux-amd64"
            .parse()
            .unwrap(),
        sha256: Some("AB".repeat(32)),
    };
    b.node_name = Some(HostName::parse("db-3").unwrap());
    b.systemd_unit = Some("[Unit]\nDescription=apiary agent (from deploy/)\n\n[Service]\nExecStart=/usr/local/bin/apiary-agent run\n\n[Install]\nWantedBy=multi-user.target\n".into());
    let ud = render_user_data(&b).expect("render");
    if let Some((ok, text)) = cloud_init_schema(&ud) {
        assert!(ok, "cloud-init schema:\n{text}");
    }
    let doc: Value = serde_norway::from_str(&ud).expect("YAML");
    let (_, install) = install_unit(&doc);
    assert_eq!(install[2], "system");
    assert_eq!(install[3], "ab".repeat(32));
    let agent = get(file(&doc, AGENT_CONFIG_PATH), "content")
        .as_str()
        .unwrap()
        .to_owned();
    let toml: toml::Value = toml::from_str(&agent).unwrap();
    assert_eq!(toml["node_name"].as_str(), Some("db-3"));
    assert!(
        get(file(&doc, UNIT_PATH), "content")
            .as_str()
            .unwrap()
            .contains("from deploy/")
    );
}

#[test]
fn values_cannot_break_out_of_their_fields() {
    let mut b = bootstrap();
    b.state_dir = "/var/lib/apiary\nruncmd: [rm, -rf, /]".into();
    assert!(
        render_user_data(&b).is_err(),
        "control characters in a path are refused"
    );
    let mut b = bootstrap();
    b.state_dir = "/var/lib/apiary \"quoted\" 'x' #: ".into();
    let ud = render_user_data(&b).expect("odd but legal path");
    let doc: Value = serde_norway::from_str(&ud).expect("YAML");
    let agent = get(file(&doc, AGENT_CONFIG_PATH), "content")
        .as_str()
        .unwrap()
        .to_owned();
    let toml: toml::Value = toml::from_str(&agent).unwrap();
    assert_eq!(toml["state_dir"].as_str(), Some(b.state_dir.as_str()));
    assert_eq!(runcmd(&doc).len(), 2);
}

#[test]
fn the_install_unit_retries_forever_and_alone_enables_the_agent() {
    let ud = render_user_data(&bootstrap()).expect("render");
    let doc: Value = serde_norway::from_str(&ud).expect("YAML");
    let (unit, _) = install_unit(&doc);
    let keys: Vec<(&str, &str)> = unit.lines().filter_map(|l| l.split_once('=')).collect();
    let value = |k: &str| -> Vec<&str> {
        keys.iter()
            .filter(|(key, _)| *key == k)
            .map(|(_, v)| *v)
            .collect()
    };
    assert_eq!(value("Type"), ["oneshot"]);
    assert_eq!(value("Restart"), ["on-failure"], "{unit}");
    assert_eq!(
        value("RestartSec"),
        [INSTALL_RETRY_SEC.to_string().as_str()]
    );
    const { assert!(INSTALL_RETRY_SEC > 0) };
    assert_eq!(
        value("StartLimitIntervalSec"),
        ["0"],
        "no start limit: systemd never gives up on it"
    );
    // Wanted at boot until the binary is in: a droplet rebooted before the
    // download got through tries again (runcmd runs once per instance);
    // once installed, boots skip it.
    assert_eq!(value("WantedBy"), ["multi-user.target"], "{unit}");
    assert_eq!(
        value("ConditionPathExists"),
        [format!("!{AGENT_BINARY_PATH}").as_str()],
        "{unit}"
    );
    // Success (ExecStartPost runs only after ExecStart succeeded) enables
    // and starts the agent; nothing else anywhere enables it.
    let post = value("ExecStartPost");
    assert_eq!(post.len(), 1, "{unit}");
    let post: Vec<&str> = post[0].split_whitespace().collect();
    assert_eq!(
        post[..4],
        ["/usr/bin/systemctl", "enable", "--now", "--no-block"]
    );
    assert!(post.contains(&UNIT_NAME), "{post:?}");
    let enables_agent = |text: &str| text.contains("enable") && text.contains(UNIT_NAME);
    for cmd in runcmd(&doc) {
        assert!(
            !enables_agent(&cmd.join(" ")),
            "runcmd enables the agent: {cmd:?}"
        );
    }
    let agent_unit = get(file(&doc, UNIT_PATH), "content").as_str().unwrap();
    assert!(!enables_agent(agent_unit));
    assert_eq!(
        ud.matches(&format!(
            "enable --now --no-block docker.service {UNIT_NAME}"
        ))
        .count(),
        1,
        "the agent is enabled in exactly one place"
    );
}

#[test]
fn packages_and_ssh_are_locked_down() {
    let ud = render_user_data(&bootstrap()).expect("render");
    let doc: Value = serde_norway::from_str(&ud).expect("YAML");
    let packages = packages(&doc);
    for p in ["docker.io", "nftables", "curl", "ca-certificates"] {
        assert!(packages.contains(&p), "{p} missing: {packages:?}");
    }
    assert_eq!(
        get(&doc, "ssh_pwauth").as_bool(),
        Some(false),
        "password SSH off"
    );
    let sshd = get(file(&doc, SSHD_DROP_IN_PATH), "content")
        .as_str()
        .unwrap();
    for line in [
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
    ] {
        assert!(sshd.lines().any(|l| l == line), "{line} missing:\n{sshd}");
    }
}

/// The installer as the install unit runs it (its ExecStart argv, paths
/// under a scratch root), then the unit's success step as systemd would:
/// only when ExecStart exited 0. A download that fails leaves no binary, no
/// temporary file and no agent enabled.
#[test]
fn a_failed_download_leaves_no_agent_enabled() {
    let mut b = bootstrap();
    // Nothing listens on port 1: the download fails after its few retries.
    b.agent_source = AgentSource::Url {
        url: "https://127.0.0.1:1/agent".parse().unwrap(),
        sha256: Some(SUM.into()),
    };
    let ud = render_user_data(&b).expect("render");
    let doc: Value = serde_norway::from_str(&ud).expect("YAML");
    let (unit, argv) = install_unit(&doc);
    let root = tempfile::tempdir().expect("root");
    for d in ["etc/apiary", "usr/local/bin", "usr/local/lib/apiary"] {
        std::fs::create_dir_all(root.path().join(d)).expect("mkdir");
    }
    let script = root.path().join(INSTALLER_PATH.trim_start_matches('/'));
    std::fs::write(
        &script,
        get(file(&doc, INSTALLER_PATH), "content").as_str().unwrap(),
    )
    .expect("script");
    let out = Command::new("sh")
        .arg(&script)
        .args(&argv[1..])
        .env("APIARY_INSTALL_ROOT", root.path())
        .output()
        .expect("run the installer");
    assert!(!out.status.success(), "a failed download reported success");
    // systemd runs ExecStartPost only after a successful ExecStart; here
    // it would not run, so nothing enables the agent.
    let enabled = out.status.success().then(|| {
        unit.lines()
            .find_map(|l| l.strip_prefix("ExecStartPost="))
            .map(str::to_owned)
    });
    assert_eq!(enabled, None);
    let installed = root.path().join(AGENT_BINARY_PATH.trim_start_matches('/'));
    assert!(!installed.exists(), "a binary was installed");
    let leftovers: Vec<_> = std::fs::read_dir(root.path().join("usr/local/bin"))
        .expect("ls")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(
        !root
            .path()
            .join("etc/systemd/system/multi-user.target.wants")
            .join(UNIT_NAME)
            .exists()
    );
    // And systemd would try again: the unit restarts on failure.
    assert!(unit.lines().any(|l| l == "Restart=on-failure"));
}

#[test]
fn the_coordinator_droplet_gets_the_host_key_apiary_made_and_no_password_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("host");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "apiary-test", "-f"])
        .arg(&key)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no ssh-keygen (apt-get install openssh-client)");
        return;
    }
    let private = std::fs::read_to_string(&key).expect("private");
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public");
    let ud =
        apiary_digitalocean::cloud_init::render_coordinator_user_data(&private, &public, false)
            .expect("render");
    assert!(!ud.contains("packages"), "{ud}");
    let host =
        apiary_digitalocean::cloud_init::render_coordinator_user_data(&private, &public, true)
            .expect("render");
    if let Some((ok, text)) = cloud_init_schema(&host) {
        assert!(ok, "cloud-init schema:\n{text}\n{host}");
    }
    assert!(
        host.contains("docker.io") && host.contains("nftables"),
        "{host}"
    );
    if let Some((ok, text)) = cloud_init_schema(&ud) {
        assert!(
            ok && text.contains("Valid"),
            "cloud-init schema:\n{text}\n{ud}"
        );
    }
    let doc: Value = serde_norway::from_str(&ud).expect("YAML");
    assert_eq!(get(&doc, "ssh_pwauth").as_bool(), Some(false));
    let keys = get(&doc, "ssh_keys");
    assert_eq!(
        get(keys, "ed25519_private").as_str(),
        Some(private.as_str())
    );
    assert_eq!(get(keys, "ed25519_public").as_str(), Some(public.trim()));
    assert!(!ud.contains("DIGITALOCEAN"), "no token in user_data");
    // Refusals: not keys.
    assert!(
        apiary_digitalocean::cloud_init::render_coordinator_user_data("nope", &public, false)
            .is_err()
    );
    assert!(
        apiary_digitalocean::cloud_init::render_coordinator_user_data(
            &private,
            "ssh-rsa AAAA",
            false
        )
        .is_err()
    );
}
