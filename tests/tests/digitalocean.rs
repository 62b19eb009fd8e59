//! The digitalocean provider through the real `coordinator` binary, against the
//! fake DigitalOcean API (held to the OpenAPI spec): create, adopt after kill -9,
//! scale up and down, teardown, a missing token refused first, and droplets
//! booted from the agent binary the coordinator serves (the rendered installer
//! run here against the live listener, as a droplet would run it), the
//! shipped example spec run as is, and a surplus node whose drain fails
//! keeping its droplet.

use std::process::Command;
use std::time::Duration;

use apiary_digitalocean::fake::{FakeOptions, FakeServer};
use apiary_tests::*;

struct Fixture {
    rt: tokio::runtime::Runtime,
    fake: Option<FakeServer>,
    dir: tempfile::TempDir,
    port: u16,
}

const TOKEN: &str = "dop_v1_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

impl Fixture {
    /// The cluster's join token, as `coordinator token` prints it.
    fn join_token(&self) -> String {
        let out = Command::new(bin("coordinator"))
            .args(["token", "--state-dir"])
            .arg(self.dir.path().join("state"))
            .output()
            .expect("token");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Every request the client sent and every answer the fake gave held
    /// to DigitalOcean's OpenAPI spec.
    fn assert_spec_kept(&self) {
        let violations = self.fake().api().violations();
        assert!(
            violations.is_empty(),
            "requests broke the OpenAPI spec: {violations:?}"
        );
    }

    fn new() -> Fixture {
        Fixture::with_options(FakeOptions {
            token: Some(TOKEN.into()),
            ..Default::default()
        })
    }

    fn with_options(options: FakeOptions) -> Fixture {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let fake = rt.block_on(FakeServer::start(options)).expect("fake");
        Fixture {
            rt,
            fake: Some(fake),
            dir: tempfile::tempdir().expect("tmp"),
            port: free_port(),
        }
    }

    fn fake(&self) -> &FakeServer {
        self.fake.as_ref().expect("fake")
    }

    fn config(&self, hosts: usize) -> std::path::PathBuf {
        let path = self.dir.path().join(format!("do-{hosts}.toml"));
        std::fs::write(
            &path,
            format!(
                "[cluster]\nname = \"hive\"\n\n[coordinator]\nlisten = \"127.0.0.1:{}\"\nadvertise = \"10.20.0.2:7443\"\n\n[provider]\nkind = \"digitalocean\"\nhosts = {hosts}\n\n[digitalocean]\napi_url = \"{}\"\nregion = \"nyc3\"\nagent_url = \"https://downloads.apiary.invalid/agent\"\npoll_interval = \"100ms\"\nfirewall = true\n",
                self.port,
                self.fake().url()
            ),
        )
        .expect("write");
        path
    }

    /// No `agent_url`: hosts fetch the agent from the coordinator's artifact
    /// listener on `artifacts_port` (loopback; the advertise IP is too).
    fn config_served(&self, artifacts_port: u16, extra: &str) -> std::path::PathBuf {
        let path = self.dir.path().join("do-served.toml");
        std::fs::write(
            &path,
            format!(
                "[cluster]\nname = \"hive\"\n\n[coordinator]\nlisten = \"127.0.0.1:{port}\"\nadvertise = \"127.0.0.1:{port}\"\nartifacts_listen = \"127.0.0.1:{artifacts_port}\"\n{extra}\n[provider]\nkind = \"digitalocean\"\nhosts = 4\n\n[digitalocean]\napi_url = \"{}\"\nregion = \"nyc3\"\npoll_interval = \"100ms\"\n",
                self.fake().url(),
                port = self.port,
            ),
        )
        .expect("write");
        path
    }

    fn serve(&self, hosts: usize) -> Proc {
        self.serve_config(&self.config(hosts), &format!("{hosts}"))
    }

    fn serve_config(&self, config: &std::path::Path, tag: &str) -> Proc {
        let mut cmd = Command::new(bin("coordinator"));
        cmd.args(["serve", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(self.dir.path().join("state"));
        cmd.env("DIGITALOCEAN_ACCESS_TOKEN", TOKEN);
        Proc::spawn(
            cmd,
            &self
                .dir
                .path()
                .join(format!("serve-{tag}-{}.log", free_port())),
        )
    }

    fn droplet_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .fake()
            .api()
            .droplets()
            .into_iter()
            .filter(|d| d.tags.iter().any(|t| t == "apiary-hive"))
            .map(|d| d.name)
            .collect();
        names.sort();
        names
    }

    fn creates(&self) -> usize {
        self.fake()
            .api()
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/v2/droplets")
            .count()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(f) = self.fake.take() {
            self.rt.block_on(f.shutdown());
        }
    }
}

#[test]
fn droplets_are_created_adopted_scaled_and_torn_down_without_duplicates() {
    let fx = Fixture::new();
    let mut serve = fx.serve(4);
    let four = ["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"];
    // The fake records a request once it has answered it, a moment after the
    // droplets exist: wait for both.
    eventually("4 droplets", Duration::from_secs(30), || {
        (fx.droplet_names() == four && fx.creates() >= 1).then_some(())
    });
    let creates = fx.creates();
    assert_eq!(
        creates, 4,
        "each droplet has its own user_data (its own host token): one create each"
    );

    // Each user_data boots the agent with a host token of its own (not the
    // cluster's join token), bound to the droplet's name, and the CA.
    let cluster_token = fx.join_token();
    let mut tokens = std::collections::BTreeMap::new();
    for droplet in fx.fake().api().droplets() {
        let user_data = droplet.user_data.expect("user_data");
        assert!(user_data.starts_with("#cloud-config"), "{user_data}");
        let doc: serde_norway::Value = serde_norway::from_str(&user_data).expect("YAML");
        let agent: toml::Value =
            toml::from_str(&written(&doc, "/etc/apiary/agent.toml")).expect("agent.toml");
        let token = agent["join_token"]
            .as_str()
            .expect("join_token")
            .to_string();
        assert_ne!(
            token, cluster_token,
            "{}: the cluster token in user_data",
            droplet.name
        );
        assert_eq!(agent["node_name"].as_str(), Some(droplet.name.as_str()));
        assert!(
            user_data.contains("10.20.0.2:7443"),
            "user_data lacks the advertised address"
        );
        assert!(!user_data.contains("PRIVATE KEY"));
        assert!(
            !user_data.contains(TOKEN),
            "the API token must never reach a droplet"
        );
        tokens.insert(droplet.name.clone(), token);
    }
    assert_eq!(
        tokens
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        4
    );

    // A host token enrolls its own droplet's name, once: a real agent with
    // queenbee's token is refused as workerbee-1, enrolls as queenbee, and
    // the same token is refused for queenbee again.
    let endpoint = format!("127.0.0.1:{}", fx.port);
    let enroll = |name: &str, dir: &str| {
        let state = fx.dir.path().join(dir);
        let mut agent = Agent::start(&endpoint, Some(&tokens["queenbee"]), &state, name);
        let code = eventually(
            "the agent enrolls or is refused",
            Duration::from_secs(30),
            || {
                if apiary_certs::Identity::exists(&state) {
                    return Some(0);
                }
                agent.proc.try_exit()
            },
        );
        (code, agent.proc.log_text())
    };
    let (code, log) = enroll("workerbee-1", "a1");
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("made for host queenbee, not workerbee-1"),
        "{log}"
    );
    let (code, log) = enroll("queenbee", "a2");
    assert_eq!(code, 0, "{log}");
    let (code, log) = enroll("queenbee", "a3");
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("already enrolled node queenbee"), "{log}");

    // kill -9 and start again: the droplets are adopted, nothing is created.
    serve.kill9();
    let mut serve = fx.serve(4);
    eventually("adopted after restart", Duration::from_secs(30), || {
        serve
            .log_text()
            .contains("droplets match the spec")
            .then_some(())
    });
    assert_eq!(
        fx.creates(),
        creates,
        "a restarted coordinator created droplets again"
    );
    assert_eq!(fx.droplet_names(), four);

    // Scale to 6, then back to 4 (the surplus is drained, then deleted).
    serve.kill9();
    let mut serve = fx.serve(6);
    eventually("6 droplets", Duration::from_secs(30), || {
        (fx.droplet_names().len() == 6).then_some(())
    });
    serve.kill9();
    let mut serve = fx.serve(4);
    eventually("back to 4", Duration::from_secs(30), || {
        (fx.droplet_names() == four).then_some(())
    });
    serve.kill9();

    let out = Command::new(bin("coordinator"))
        .args(["teardown", "--config"])
        .arg(fx.config(4))
        .arg("--state-dir")
        .arg(fx.dir.path().join("state"))
        .env("DIGITALOCEAN_ACCESS_TOKEN", TOKEN)
        .output()
        .expect("teardown");
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    for name in four {
        assert!(
            report.contains(name),
            "teardown does not say it deleted {name}: {report}"
        );
    }
    assert!(
        fx.droplet_names().is_empty(),
        "droplets left after teardown"
    );
    assert!(
        fx.fake().api().firewalls().is_empty(),
        "firewall left after teardown"
    );
    fx.assert_spec_kept();
    let _ = serve.try_exit();
}

#[test]
fn a_missing_token_is_refused_before_anything_else() {
    let fx = Fixture::new();
    let out = Command::new(bin("coordinator"))
        .args(["serve", "--config"])
        .arg(fx.config(4))
        .arg("--state-dir")
        .arg(fx.dir.path().join("state"))
        .env_remove("DIGITALOCEAN_ACCESS_TOKEN")
        .output()
        .expect("serve");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("DIGITALOCEAN_ACCESS_TOKEN"),
        "{}",
        stderr(&out)
    );
    assert!(
        fx.fake().api().requests().is_empty(),
        "the API was called without a token"
    );
    assert!(
        !fx.dir.path().join("state").exists(),
        "state was created before the token check"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `write_files` entry's content in the rendered cloud-config.
fn written(doc: &serde_norway::Value, path: &str) -> String {
    doc["write_files"]
        .as_sequence()
        .expect("write_files")
        .iter()
        .find(|f| f["path"].as_str() == Some(path))
        .and_then(|f| f["content"].as_str())
        .unwrap_or_else(|| panic!("user_data writes no {path}"))
        .to_string()
}

#[test]
fn droplets_boot_from_the_agent_binary_the_coordinator_serves() {
    use apiary_digitalocean::cloud_init::{
        CA_PATH, INSTALL_UNIT_PATH, INSTALLER_PATH, UNIT_NAME, install_unit_command,
    };

    let fx = Fixture::new();
    let artifacts_port = free_port();
    // No agent_binary either: the `agent` beside the coordinator is served.
    let config = fx.config_served(artifacts_port, "");
    let mut serve = fx.serve_config(&config, "served");
    eventually("4 droplets", Duration::from_secs(60), || {
        (fx.droplet_names().len() == 4 && fx.creates() >= 1).then_some(())
    });
    let agent = std::fs::read(bin("agent")).expect("read the agent binary");
    let sum = sha256_hex(&agent);
    let url = format!("https://127.0.0.1:{artifacts_port}/v1/agent/linux-x86_64");

    let droplet = fx
        .fake()
        .api()
        .droplets()
        .into_iter()
        .next()
        .expect("droplet");
    let user_data = droplet.user_data.expect("user_data");
    let doc: serde_norway::Value = serde_norway::from_str(&user_data).expect("YAML");
    // The install unit runs the installer (and retries it) and, once it
    // succeeded, enables the agent.
    let unit = written(&doc, INSTALL_UNIT_PATH);
    let install = install_unit_command(&unit).expect("the install unit's ExecStart");
    assert!(
        unit.lines()
            .any(|l| l.starts_with("ExecStartPost=") && l.ends_with(UNIT_NAME)),
        "{unit}"
    );
    assert_eq!(
        install,
        [INSTALLER_PATH, &url, "cluster-ca", &sum],
        "the coordinator's URL, only the cluster CA trusted, the served binary's digest"
    );
    let ca = std::fs::read_to_string(fx.dir.path().join("state/pki/ca.pem")).expect("CA");
    assert_eq!(
        written(&doc, CA_PATH).trim(),
        ca.trim(),
        "the pinned CA is the cluster's"
    );
    assert!(!user_data.contains("PRIVATE KEY"));

    // Run the rendered installer as the droplet would (paths under a
    // scratch root): it fetches over the live listener, checks the digest,
    // and installs exactly the coordinator's agent.
    let root = tempfile::tempdir().expect("root");
    for d in ["etc/apiary", "usr/local/bin"] {
        std::fs::create_dir_all(root.path().join(d)).expect("mkdir");
    }
    std::fs::write(
        root.path().join(CA_PATH.trim_start_matches('/')),
        written(&doc, CA_PATH),
    )
    .expect("ca");
    let script = root.path().join("install-agent");
    std::fs::write(&script, written(&doc, INSTALLER_PATH)).expect("script");
    let run = |args: &[String]| {
        Command::new("sh")
            .arg(&script)
            .args(args)
            .env("APIARY_INSTALL_ROOT", root.path())
            .output()
            .expect("run the installer")
    };
    let installed = root.path().join("usr/local/bin/apiary-agent");
    let out = run(&install[1..]);
    assert!(out.status.success(), "installer failed: {}", stderr(&out));
    let got = std::fs::read(&installed).expect("installed agent");
    assert_eq!(
        sha256_hex(&got),
        sum,
        "the installed agent is the served one"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&installed)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    // A digest that does not match is refused on the host: nothing replaces
    // the installed binary, no temporary file is left.
    std::fs::remove_file(&installed).expect("rm");
    let mut wrong = install[1..].to_vec();
    wrong[2] = "0".repeat(64);
    let out = run(&wrong);
    assert!(!out.status.success(), "a wrong digest was installed");
    assert!(
        !installed.exists(),
        "a binary with the wrong digest was installed"
    );
    let leftovers: Vec<_> = std::fs::read_dir(root.path().join("usr/local/bin"))
        .expect("ls")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    fx.assert_spec_kept();
    serve.kill9();
}

/// `coordinator serve` against a fake with `options`, for a refusal: its
/// exit code and stderr.
fn serve_refused(options: FakeOptions, extra_digitalocean: &str) -> (Fixture, i32, String) {
    let fx = Fixture::with_options(options);
    let path = fx.config(4);
    let text = std::fs::read_to_string(&path).expect("read") + extra_digitalocean;
    std::fs::write(&path, text).expect("write");
    let out = Command::new(bin("coordinator"))
        .args(["serve", "--config"])
        .arg(&path)
        .arg("--state-dir")
        .arg(fx.dir.path().join("state"))
        .env("DIGITALOCEAN_ACCESS_TOKEN", TOKEN)
        .output()
        .expect("serve");
    (fx, out.status.code().unwrap_or(-1), stderr(&out))
}

/// Nothing in the account but what was there, and no request but reads.
fn assert_nothing_created(fx: &Fixture, seeded: usize) {
    let api = fx.fake().api();
    let writes: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(writes.is_empty(), "the refused serve wrote: {writes:?}");
    assert_eq!(api.droplets().len(), seeded, "{:?}", api.droplets());
    assert!(api.firewalls().is_empty(), "{:?}", api.firewalls());
    assert!(api.vpcs().iter().all(|v| v.default), "{:?}", api.vpcs());
    assert!(
        !api.tags().iter().any(|t| t == "apiary-hive"),
        "{:?}",
        api.tags()
    );
    assert!(
        !fx.dir.path().join("state").exists(),
        "state was created before the preflight"
    );
    fx.assert_spec_kept();
}

#[test]
fn a_preflight_refusal_exits_64_with_nothing_created() {
    // Over the droplet limit: 3 droplets of someone else's, 4 wanted, limit 5.
    let fx = Fixture::with_options(FakeOptions {
        token: Some(TOKEN.into()),
        droplet_limit: 5,
        ..Default::default()
    });
    for name in ["web-1", "web-2", "db"] {
        fx.fake().api().seed_droplet(name, &["other"]);
    }
    let out = Command::new(bin("coordinator"))
        .args(["serve", "--config"])
        .arg(fx.config(4))
        .arg("--state-dir")
        .arg(fx.dir.path().join("state"))
        .env("DIGITALOCEAN_ACCESS_TOKEN", TOKEN)
        .output()
        .expect("serve");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for part in [
        "4 more droplet",
        "already has 3",
        "limit is 5",
        "provider.hosts",
        "nothing was created",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert_eq!(
        err.matches("droplet limit is 5").count(),
        1,
        "one clear error: {err}"
    );
    assert_nothing_created(&fx, 3);

    // An image the API does not know.
    let (fx, code, err) = serve_refused(
        FakeOptions {
            token: Some(TOKEN.into()),
            ..Default::default()
        },
        "image = \"debian-99-x64\"\n",
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("digitalocean.image") && err.contains("debian-99-x64"),
        "{err}"
    );
    assert_nothing_created(&fx, 0);

    // A locked account.
    let (fx, code, err) = serve_refused(
        FakeOptions {
            token: Some(TOKEN.into()),
            account_status: ("locked".into(), "billing overdue".into()),
            ..Default::default()
        },
        "",
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("locked") && err.contains("billing overdue"),
        "{err}"
    );
    assert_nothing_created(&fx, 0);
}

#[test]
fn a_missing_agent_binary_is_refused_before_any_droplet() {
    let fx = Fixture::new();
    let missing = fx.dir.path().join("no-such-agent");
    let config = fx.config_served(
        free_port(),
        &format!("agent_binary = {:?}\n", missing.display().to_string()),
    );
    let out = Command::new(bin("coordinator"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(fx.dir.path().join("state"))
        .env("DIGITALOCEAN_ACCESS_TOKEN", TOKEN)
        .output()
        .expect("serve");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no-such-agent") && err.contains("agent_binary") && err.contains("agent_url"),
        "the error names the file and both ways out: {err}"
    );
    assert!(
        fx.fake().api().droplets().is_empty(),
        "droplets were made without an agent to give them"
    );
    assert!(
        !fx.dir.path().join("state").exists(),
        "state was created before the agent binary was checked"
    );
}

/// The droplets with `tag`, by name.
fn tagged(fx: &Fixture, tag: &str) -> Vec<apiary_digitalocean::fake::FakeDroplet> {
    let mut list: Vec<_> = fx
        .fake()
        .api()
        .droplets()
        .into_iter()
        .filter(|d| d.tags.iter().any(|t| t == tag))
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

#[test]
fn the_example_spec_makes_its_droplets_as_is() {
    use apiary_agent::config::{AgentConfig, AgentFile};
    use apiary_agent::facts::{PrivateAddress, classify};
    use apiary_digitalocean::cloud_init::AGENT_CONFIG_PATH;

    let fx = Fixture::new();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/digitalocean.toml");
    let mut cmd = Command::new(bin("coordinator"));
    // The file as shipped, served as `coordinator up` serves it on the
    // coordinator droplet (`--advertise`, the droplet's VPC address). Only
    // the listener is moved off the default 0.0.0.0:7443 (and 7444 for the
    // agent binary), which another run on this machine may hold: loopback,
    // a port the kernel picks.
    // The agent binary's listener takes the next port: both must be free
    // (port 0 would put it on whatever follows the kernel's pick, which
    // another test may hold).
    let port = (0..100)
        .map(|_| free_port())
        .find(|p| *p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok())
        .expect("two free ports in a row");
    cmd.args(["serve", "--config"])
        .arg(&example)
        .arg("--state-dir")
        .arg(fx.dir.path().join("state"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--advertise",
            "10.10.0.2:7443",
        ]);
    cmd.env("DIGITALOCEAN_ACCESS_TOKEN", TOKEN)
        .env("DIGITALOCEAN_API_URL", fx.fake().url());
    for var in [
        "DIGITALOCEAN_REGION",
        "DIGITALOCEAN_SIZE",
        "DIGITALOCEAN_IMAGE",
    ] {
        cmd.env_remove(var);
    }
    let mut serve = Proc::spawn(cmd, &fx.dir.path().join("serve-example.log"));
    let four = ["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"];
    let droplets = eventually_or(
        "the example's 4 droplets",
        Duration::from_secs(60),
        || {
            let list = tagged(&fx, "apiary-bees");
            (list.iter().map(|d| d.name.as_str()).eq(four)
                && serve.log_text().contains("droplets match the spec"))
            .then_some(list)
        },
        || serve.log_text(),
    );
    for d in &droplets {
        assert_eq!(
            (d.region.as_str(), d.size.as_str(), d.image.as_str()),
            ("nyc3", "s-2vcpu-4gb", "debian-12-x64"),
            "{d:?}"
        );
    }
    // firewall = true: one Cloud Firewall on the cluster tag.
    let firewalls = fx.fake().api().firewalls();
    assert_eq!(firewalls.len(), 1, "{firewalls:?}");
    assert_eq!(firewalls[0].tags, ["apiary-bees"]);

    // The agent.toml cloud-init writes names the VPC's range, the agent's
    // own loader reads it, and on a droplet's interfaces (eth0: public and
    // a 10.x anchor address; eth1: the VPC address) it picks the VPC one.
    let vpcs = fx.fake().api().vpcs();
    let vpc = vpcs
        .iter()
        .find(|v| v.id == droplets[0].vpc_uuid)
        .expect("the droplets' VPC");
    let user_data = droplets[0].user_data.clone().expect("user_data");
    let doc: serde_norway::Value = serde_norway::from_str(&user_data).expect("YAML");
    let path = fx.dir.path().join("agent.toml");
    std::fs::write(&path, written(&doc, AGENT_CONFIG_PATH)).expect("write agent.toml");
    let agent = AgentConfig::merge(
        AgentFile::default(),
        AgentFile::load(&path).expect("the agent accepts what cloud-init writes"),
    )
    .expect("agent config");
    let PrivateAddress::InRange(range) = &agent.private_address else {
        panic!("agent.toml does not name the VPC's range: {user_data}")
    };
    assert_eq!(range.to_string(), vpc.ip_range);
    // The cluster's tunnel allow-list (the default: loopback and the overlay
    // pool) is written for the agent, which refuses the rest, the VPC too.
    let written_allow: toml::Table =
        toml::from_str(&written(&doc, AGENT_CONFIG_PATH)).expect("agent.toml is TOML");
    assert_eq!(
        written_allow["tunnel_allow"],
        toml::Value::Array(
            ["127.0.0.0/8", "::1/128", "10.232.0.0/16"]
                .map(|c| toml::Value::String(c.into()))
                .to_vec()
        )
    );
    for (ip, allowed) in [
        ("127.0.0.1".parse().expect("ip"), true),
        ("10.232.4.5".parse().expect("ip"), true),
        (std::net::IpAddr::V4(droplets[0].private_ipv4), false),
        (std::net::IpAddr::V4(droplets[0].public_ipv4), false),
    ] {
        assert_eq!(agent.tunnel_allow.allows(ip), allowed, "{ip}");
    }
    let ifs = vec![
        (
            "eth0".to_string(),
            vec![droplets[0].public_ipv4, "10.17.0.5".parse().expect("ip")],
        ),
        ("eth1".to_string(), vec![droplets[0].private_ipv4]),
    ];
    assert_eq!(
        classify(&ifs, None, &agent.private_address).1,
        Some(droplets[0].private_ipv4)
    );

    fx.assert_spec_kept();
    serve.kill9();
}

#[test]
fn a_surplus_node_that_cannot_be_drained_keeps_its_droplet() {
    let fx = Fixture::new();
    // Swarm and a two-server etcd: with three hosts enrolled the servers
    // are etcd-1 on workerbee-3 and etcd-2 on workerbee-4; workerbee-5
    // runs none.
    let config = |hosts: usize| {
        let path = fx.config(hosts);
        let mut text = std::fs::read_to_string(&path).expect("read");
        // etcd on DigitalOcean names an image droplets can pull (the lab's
        // lab/etcd:1 is refused there); no droplet here runs it.
        text.push_str("\n[swarm]\n\n[database]\nkind = \"etcd\"\nimage = \"registry.example.com/etcd:3.5\"\nservers = 2\n");
        std::fs::write(&path, text).expect("write");
        path
    };
    let mut serve = fx.serve_config(&config(6), "6-db");
    eventually("6 droplets", Duration::from_secs(30), || {
        (fx.droplet_names().len() == 6).then_some(())
    });
    let token = fx.join_token();
    // Agents on loopback stand in for the droplets' agents: no Docker, and
    // a private range no interface here has, so no private address: the
    // cluster round leaves them alone, and the database cannot scale
    // (that is the failure under test).
    let agent_conf = fx.dir.path().join("agent.toml");
    std::fs::write(&agent_conf, "private_cidr = \"10.254.254.0/24\"\n").expect("agent.toml");
    let _agents: Vec<Proc> = ["workerbee-3", "workerbee-4", "workerbee-5"]
        .iter()
        .map(|name| {
            let mut cmd = Command::new(bin("agent"));
            cmd.arg("--config")
                .arg(&agent_conf)
                .args(["--coordinator", &format!("127.0.0.1:{}", fx.port)])
                .args(["--name", name, "--state-dir"])
                .arg(fx.dir.path().join(format!("agent-{name}")))
                .arg("--docker-socket")
                .arg(fx.dir.path().join("no-docker.sock"))
                .env("APIARY_JOIN_TOKEN", &token);
            Proc::spawn(cmd, &fx.dir.path().join(format!("agent-{name}.log")))
        })
        .collect();
    let admin = fx.dir.path().join("state/admin.conf");
    let nodes = || -> Vec<String> {
        let out = ctl_with(&admin, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut names: Vec<String> = v["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    eventually("3 agents enrolled", Duration::from_secs(60), || {
        (nodes() == ["workerbee-3", "workerbee-4", "workerbee-5"]).then_some(())
    });

    // Down to 4 hosts: workerbee-4 and -5 are surplus. workerbee-5 (no
    // database server) is drained and its droplet deleted; workerbee-4 runs
    // the last etcd server, which cannot leave: its droplet stays, and the
    // log says which node and why.
    serve.kill9();
    let mut serve = fx.serve_config(&config(4), "4-db");
    let kept = |serve: &Proc| {
        serve.log_text().lines().any(|l| {
            l.contains("surplus droplet kept")
                && l.contains("workerbee-4")
                && l.contains("etcd-2 cannot leave")
        })
    };
    eventually(
        "workerbee-4 kept, named with the reason",
        Duration::from_secs(60),
        || kept(&serve).then_some(()),
    );
    eventually(
        "workerbee-5's droplet deleted",
        Duration::from_secs(30),
        || {
            (fx.droplet_names()
                == [
                    "queenbee",
                    "workerbee-1",
                    "workerbee-2",
                    "workerbee-3",
                    "workerbee-4",
                ])
            .then_some(())
        },
    );
    assert_eq!(
        nodes(),
        ["workerbee-3", "workerbee-4"],
        "workerbee-5 left the cluster, workerbee-4 did not"
    );

    // The next reconcile (a restart is one) tries again and keeps it again.
    serve.kill9();
    let mut serve = fx.serve_config(&config(4), "4-db-again");
    eventually("workerbee-4 tried again", Duration::from_secs(60), || {
        kept(&serve).then_some(())
    });
    assert!(
        fx.droplet_names().contains(&"workerbee-4".to_string()),
        "a node whose drain failed lost its droplet"
    );
    fx.assert_spec_kept();
    serve.kill9();
}

#[test]
fn ctl_scale_hosts_makes_and_drains_droplets_on_a_running_coordinator_and_the_count_is_kept() {
    let fx = Fixture::new();
    // No Swarm (on by default on DigitalOcean, with RethinkDB): no agent
    // runs here, and a scale with a database waits for the new hosts to
    // join the swarm before it answers.
    let spec = fx.config(4);
    let text = std::fs::read_to_string(&spec).expect("read") + "\n[swarm]\nenabled = false\n";
    std::fs::write(&spec, text).expect("write");
    let serve = fx.serve_config(&spec, "4-no-swarm");
    let four = ["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"];
    eventually("4 droplets", Duration::from_secs(30), || {
        (fx.droplet_names() == four).then_some(())
    });
    let conf = fx.dir.path().join("state/admin.conf");
    eventually("admin.conf", Duration::from_secs(10), || {
        conf.exists().then_some(())
    });
    let scale = |n: &str| {
        let out = ctl_with(&conf, &["scale", &format!("hosts={n}")]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr(&out),
        )
    };
    let (code, out, err) = scale("6");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("hosts: 4 -> 6: workerbee-4, workerbee-5 made"),
        "{out}"
    );
    assert_eq!(
        fx.droplet_names().len(),
        6,
        "the scale answers once the droplets exist"
    );
    // Out of range: refused with the limit, nothing changes.
    let (code, _, err) = scale("0");
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("between 1 and 200"), "{err}");
    // A restarted coordinator keeps the scaled count, not the spec's 4.
    let mut serve = serve;
    serve.kill9();
    let mut serve = fx.serve_config(&spec, "4-no-swarm-again");
    eventually("adopted after restart", Duration::from_secs(30), || {
        serve
            .log_text()
            .contains("droplets match the spec")
            .then_some(())
    });
    assert_eq!(
        fx.droplet_names().len(),
        6,
        "the recorded count was forgotten"
    );
    // Down: the surplus (never enrolled here) is deleted, highest first.
    let (code, out, err) = scale("4");
    assert_eq!(code, Some(0), "{out}{err}");
    let five = out
        .find("workerbee-5: drained")
        .unwrap_or_else(|| panic!("{out}"));
    let four_at = out
        .find("workerbee-4: drained")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(five < four_at, "{out}");
    assert_eq!(fx.droplet_names(), four);
    serve.kill9();
    fx.assert_spec_kept();
}

/// A droplet whose agent never enrolls (here: nothing runs its user_data) is
/// deleted after `enroll_timeout` and made again with a new host token, three
/// times; then it is kept and reported, naming where to look, and no more
/// droplets are made for it.
#[test]
fn droplets_that_never_enroll_are_made_again_three_times_then_reported() {
    let fx = Fixture::new();
    let config = fx.config(2);
    let text = std::fs::read_to_string(&config).expect("read") + "enroll_timeout = \"2s\"\n";
    std::fs::write(&config, text).expect("write");
    let serve = fx.serve_config(&config, "enroll");
    let token_of = |d: &apiary_digitalocean::fake::FakeDroplet| {
        let doc: serde_norway::Value =
            serde_norway::from_str(d.user_data.as_deref().expect("user_data")).expect("YAML");
        let agent: toml::Value =
            toml::from_str(&written(&doc, "/etc/apiary/agent.toml")).expect("agent.toml");
        agent["join_token"].as_str().expect("token").to_string()
    };
    let mut tokens = std::collections::BTreeSet::new();
    let started = std::time::Instant::now();
    let given_up = loop {
        for d in tagged(&fx, "apiary-hive") {
            tokens.insert(token_of(&d));
        }
        let log = serve.log_text();
        if ["queenbee", "workerbee-1"]
            .iter()
            .all(|h| log.contains(&format!("(host {h}) has not enrolled after 3 replacements")))
        {
            break log;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "both hosts not given up on after 90 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        given_up.contains("/var/log/cloud-init-output.log"),
        "the report says where to look: {given_up}"
    );
    // Made four times each (the first and three replacements), each time
    // with a new token; nothing more once given up on.
    let creates = fx.creates();
    assert_eq!(creates, 8, "one create per droplet made");
    assert_eq!(tokens.len(), 8, "a new host token for every droplet made");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        fx.creates(),
        creates,
        "a host given up on is not made again"
    );
    assert_eq!(fx.droplet_names(), ["queenbee", "workerbee-1"]);
}

/// `coordinator up` with `args` on a spec without `coordinator.listen` and
/// `advertise` (both derived), `extra` appended to `[digitalocean]`.
fn up_refused(fx: &Fixture, extra_coordinator: &str, args: &[&str]) -> (i32, String) {
    let path = fx.dir.path().join("up.toml");
    std::fs::write(
        &path,
        format!(
            "[cluster]\nname = \"hive\"\n\n[coordinator]\n{extra_coordinator}\n[provider]\nkind = \"digitalocean\"\nhosts = 4\n\n[digitalocean]\napi_url = \"{}\"\nregion = \"nyc3\"\npoll_interval = \"100ms\"\n",
            fx.fake().url()
        ),
    )
    .expect("write");
    let out = Command::new(bin("coordinator"))
        .args(["up", "--config"])
        .arg(&path)
        .arg("--state-dir")
        .arg(fx.dir.path().join("laptop"))
        .args(args)
        .env("DIGITALOCEAN_ACCESS_TOKEN", TOKEN)
        .output()
        .expect("up");
    (out.status.code().unwrap_or(-1), stderr(&out))
}

#[test]
fn coordinator_up_refuses_what_cannot_work_before_anything_exists() {
    let fx = Fixture::new();
    // No --admin-cidr: SSH and ctl's port would have no source.
    let (code, err) = up_refused(&fx, "", &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--admin-cidr"), "{err}");
    // The world is not an admin network.
    let (code, err) = up_refused(&fx, "", &["--admin-cidr", "0.0.0.0/0"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("0.0.0.0/0") && err.contains("whole internet"),
        "{err}"
    );
    // advertise is derived, never typed.
    let (code, err) = up_refused(
        &fx,
        "advertise = \"10.9.9.9:7443\"\n",
        &["--admin-cidr", "198.18.0.1/32"],
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("coordinator.advertise") && err.contains("up.toml"),
        "{err}"
    );
    // A coordinator listening on one address cannot be reached on the others.
    let (code, err) = up_refused(
        &fx,
        "listen = \"127.0.0.1:7443\"\n",
        &["--admin-cidr", "198.18.0.1/32"],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("coordinator.listen"), "{err}");
    assert_nothing_created(&fx, 0);
    assert!(
        !fx.dir.path().join("laptop").exists(),
        "files made before the checks"
    );

    // Over the droplet limit with the coordinator's droplet counted: 4
    // hosts and the coordinator, limit 4.
    let fx = Fixture::with_options(FakeOptions {
        token: Some(TOKEN.into()),
        droplet_limit: 4,
        ..Default::default()
    });
    let (code, err) = up_refused(&fx, "", &["--admin-cidr", "198.18.0.1/32"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("5 more droplet") && err.contains("nothing was created"),
        "{err}"
    );
    assert_nothing_created(&fx, 0);

    // Not DigitalOcean.
    let lab = fx.dir.path().join("lab.toml");
    std::fs::write(
        &lab,
        "[cluster]\nname = \"hive\"\n\n[provider]\nkind = \"manual\"\n",
    )
    .expect("write");
    let out = Command::new(bin("coordinator"))
        .args(["up", "--admin-cidr", "198.18.0.1/32", "--config"])
        .arg(&lab)
        .output()
        .expect("up");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("coordinator serve"),
        "{}",
        stderr(&out)
    );
}
