//! Shared set-up for the tests against the fake API.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apiary_digitalocean::client::RetryPolicy;
use apiary_digitalocean::fake::{FakeOptions, FakeServer, ScaledClock};
use apiary_digitalocean::{
    Client, ClusterTarget, DigitalOceanConfig, DigitalOceanSpec, HostName, HostSpec, TOKEN_VAR,
    TagName,
};

pub const TOKEN: &str = "dop_v1_0123456789abcdef-test-token";

pub struct Env {
    pub fake: FakeServer,
    pub config: DigitalOceanConfig,
    pub clock: Arc<ScaledClock>,
}

/// A fake with `options` (its token set to [`TOKEN`]) and a config pointing
/// at it; `edit` adjusts the spec before validation.
pub async fn setup(mut options: FakeOptions, edit: impl FnOnce(&mut DigitalOceanSpec)) -> Env {
    options.token = Some(TOKEN.to_owned());
    let fake = FakeServer::start(options).await.expect("fake starts");
    let mut spec = DigitalOceanSpec::new();
    spec.poll_interval = Duration::from_millis(1000);
    spec.boot_timeout = Duration::from_secs(10);
    spec.request_timeout = Duration::from_secs(5);
    edit(&mut spec);
    let env: HashMap<&str, String> = [
        (TOKEN_VAR, TOKEN.to_owned()),
        ("DIGITALOCEAN_API_URL", fake.url()),
    ]
    .into_iter()
    .collect();
    let config = spec
        .validate(|k| env.get(k).cloned())
        .expect("test config is valid");
    Env {
        fake,
        config,
        // Sleeps shortened 50x: a 1 s poll is 20 ms, a 2 s rate-limit
        // reset 40 ms; what was asked is still recorded at full length.
        clock: ScaledClock::new(50),
    }
}

impl Env {
    /// A fresh client, as a restarted coordinator would make.
    pub fn client(&self) -> Client {
        Client::with_policy(&self.config, fast_policy(&self.config), self.clock.clone())
            .expect("client builds")
    }

    pub fn target(&self, tag: &str, names: &[String]) -> ClusterTarget {
        let hosts = names
            .iter()
            .map(|n| HostSpec {
                name: HostName::parse(n).expect("valid host name"),
                user_data: Some("#cloud-config\n{}\n".to_owned()),
            })
            .collect();
        ClusterTarget::new(&self.config, tag_name(tag), hosts)
    }

    /// Fails the test on any departure from the OpenAPI spec, in either
    /// direction.
    pub fn assert_spec_clean(&self) {
        let v = self.fake.violations();
        assert!(
            v.is_empty(),
            "spec violations:\n{}",
            v.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// Fails the test if two droplets share a name.
    pub fn assert_no_duplicates(&self) {
        let mut seen = std::collections::HashSet::new();
        for d in self.fake.droplets() {
            assert!(seen.insert(d.name.clone()), "duplicate droplet {}", d.name);
        }
    }

    pub fn droplet_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.fake.droplets().into_iter().map(|d| d.name).collect();
        names.sort();
        names
    }

    pub fn count_requests(&self, op: &str) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| r.operation.as_deref() == Some(op))
            .count()
    }
}

pub fn fast_policy(config: &DigitalOceanConfig) -> RetryPolicy {
    RetryPolicy {
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(2),
        request_timeout: config.timeouts.request,
        ..RetryPolicy::default()
    }
}

pub fn tag_name(t: &str) -> TagName {
    TagName::parse(t).expect("valid tag")
}

pub fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}
