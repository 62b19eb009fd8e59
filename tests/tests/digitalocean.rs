//! The digitalocean provider through the real `coordinator` binary, against the
//! fake DigitalOcean API (held to the OpenAPI spec): create, adopt after kill -9,
//! scale up and down, teardown, and a missing token refused first.

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

    fn serve(&self, hosts: usize) -> Proc {
        let mut cmd = Command::new(bin("coordinator"));
        cmd.args(["serve", "--config"])
            .arg(self.config(hosts))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"));
        cmd.env("DIGITALOCEAN_ACCESS_TOKEN", TOKEN);
        Proc::spawn(
            cmd,
            &self
                .dir
                .path()
                .join(format!("serve-{hosts}-{}.log", free_port())),
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
