//! The digitalocean provider through the real `coordinator` binary, against the
//! fake DigitalOcean API (held to the OpenAPI spec): create, adopt after kill -9,
//! scale up and down, teardown, a missing token refused first, and droplets
//! booted from the agent binary the coordinator serves (the rendered installer
//! run here against the live listener, as a droplet would run it).

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
    fn new() -> Fixture {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let fake = rt
            .block_on(FakeServer::start(FakeOptions {
                token: Some(TOKEN.into()),
                ..Default::default()
            }))
            .expect("fake");
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
        creates, 1,
        "four hosts with one user_data take one multi-create request"
    );

    // The user_data boots the agent with this cluster's join token and CA.
    let token = String::from_utf8_lossy(
        &Command::new(bin("coordinator"))
            .args(["token", "--state-dir"])
            .arg(fx.dir.path().join("state"))
            .output()
            .expect("token")
            .stdout,
    )
    .trim()
    .to_string();
    let droplet = fx
        .fake()
        .api()
        .droplets()
        .into_iter()
        .next()
        .expect("droplet");
    let user_data = droplet.user_data.expect("user_data");
    assert!(user_data.starts_with("#cloud-config"), "{user_data}");
    assert!(
        user_data.contains(&token),
        "user_data lacks the current join token"
    );
    assert!(
        user_data.contains("10.20.0.2:7443"),
        "user_data lacks the advertised address"
    );
    assert!(!user_data.contains("PRIVATE KEY"));
    assert!(
        !user_data.contains(TOKEN),
        "the API token must never reach a droplet"
    );

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
    assert!(
        fx.fake().api().violations().is_empty(),
        "requests broke the OpenAPI spec: {:?}",
        fx.fake().api().violations()
    );
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
    use apiary_digitalocean::cloud_init::{CA_PATH, INSTALLER_PATH};

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
    let install: Vec<String> = doc["runcmd"]
        .as_sequence()
        .expect("runcmd")
        .iter()
        .map(|c| {
            c.as_sequence()
                .expect("argv")
                .iter()
                .map(|a| a.as_str().expect("string").to_string())
                .collect::<Vec<_>>()
        })
        .find(|c| c[0] == INSTALLER_PATH)
        .expect("an install step");
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

    assert!(
        fx.fake().api().violations().is_empty(),
        "requests broke the OpenAPI spec: {:?}",
        fx.fake().api().violations()
    );
    serve.kill9();
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
