//! Every fault mode of the fake, survived with no duplicate droplet and no
//! leaked one, and with every exchange still inside the OpenAPI spec.

// Tests panic on the unexpected by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use apiary_digitalocean::client::SystemClock;
use apiary_digitalocean::fake::{FakeOptions, Fault, Loss, RandomFaults};
use apiary_digitalocean::{Client, ProviderError, reconcile, teardown};
use common::{Env, fast_policy, names, setup, tag_name};

fn op(name: &str) -> Option<String> {
    Some(name.to_owned())
}

/// Reconciles, checks the cluster is whole and unique, tears down, checks
/// nothing is left, and that the spec held throughout.
async fn survive(env: &Env, tag: &str, hosts: usize) -> apiary_digitalocean::ReconcileReport {
    let client = env.client();
    let want = names("h", hosts);
    let report = reconcile(&client, &env.target(tag, &want))
        .await
        .expect("reconcile survives");
    assert!(report.is_ready(), "{report}");
    env.assert_no_duplicates();
    assert_eq!(env.droplet_names().len(), hosts);
    let down = teardown(&client, &tag_name(tag))
        .await
        .expect("teardown survives");
    assert!(down.is_complete(), "{down}");
    assert!(
        env.fake.droplets().is_empty(),
        "leaked: {:?}",
        env.droplet_names()
    );
    env.assert_spec_clean();
    report
}

#[tokio::test]
async fn rate_limit_bursts_wait_for_the_reset() {
    let env = setup(FakeOptions::default(), |_| {}).await;
    env.fake.inject(Fault::RateLimit {
        operation: op("droplets_list"),
        count: 3,
        reset_in: Duration::from_secs(2),
        retry_after: None,
    });
    env.fake.inject(Fault::RateLimit {
        operation: op("droplets_create"),
        count: 2,
        reset_in: Duration::from_secs(2),
        retry_after: None,
    });
    survive(&env, "apiary-429", 5).await;
    // The client asked to wait until the announced reset each time (1-3 s:
    // the header is whole epoch seconds), not a blind backoff.
    let waits: Vec<Duration> = env
        .clock
        .requested()
        .into_iter()
        .filter(|d| *d >= Duration::from_millis(900))
        .collect();
    assert!(waits.len() >= 5, "{:?}", env.clock.requested());
    assert!(
        waits.iter().all(|d| *d <= Duration::from_millis(3300)),
        "{waits:?}"
    );
}

#[tokio::test]
async fn retry_after_wins_over_a_distant_reset() {
    let env = setup(FakeOptions::default(), |_| {}).await;
    env.fake.inject(Fault::RateLimit {
        operation: None,
        count: 1,
        reset_in: Duration::from_secs(1800),
        retry_after: Some(1),
    });
    let client = env.client();
    client.account().await.expect("account after one 429");
    assert_eq!(env.clock.requested(), vec![Duration::from_secs(1)]);
    assert_eq!(client.stats().rate_limited, 1);
    // A reset further away than the client waits fails fast, naming the
    // operation, instead of hanging for half an hour.
    env.fake.inject(Fault::RateLimit {
        operation: None,
        count: 1,
        reset_in: Duration::from_secs(1800),
        retry_after: None,
    });
    let err = client.account().await.unwrap_err();
    assert!(
        err.to_string().contains("account_get") && err.to_string().contains("rate limited"),
        "{err}"
    );
    env.assert_spec_clean();
}

/// Real time, real clock: during an exhausted window the client sends one
/// request, reads the reset, and sends nothing else until then.
#[tokio::test]
async fn no_request_leaves_before_the_reset() {
    let env = setup(FakeOptions::default(), |_| {}).await;
    let client = Client::with_policy(&env.config, fast_policy(&env.config), Arc::new(SystemClock))
        .expect("client");
    client.account().await.expect("warm up");
    env.fake.inject(Fault::RateLimitWindow {
        duration: Duration::from_millis(1200),
    });
    let started = std::time::Instant::now();
    client.list_vpcs().await.expect("after the window");
    assert!(started.elapsed() >= Duration::from_millis(1000));
    assert_eq!(
        env.fake.early_requests(),
        1,
        "requests sent before the announced reset"
    );
    env.assert_spec_clean();
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let env = setup(FakeOptions::default(), |_| {}).await;
    env.fake.inject(Fault::ServerError {
        operation: op("droplets_list"),
        count: 3,
    });
    env.fake.inject(Fault::ServerError {
        operation: op("vpcs_create"),
        count: 1,
    });
    // A 500 before the create did anything: the client cannot know that,
    // lists, finds nothing, creates again; still exactly one per name.
    env.fake.inject(Fault::ServerError {
        operation: op("droplets_create"),
        count: 2,
    });
    survive(&env, "apiary-500", 4).await;
    assert_eq!(
        env.fake
            .vpcs()
            .iter()
            .filter(|v| v.name == "apiary-500-vpc")
            .count(),
        0
    );
    // Backoff grew: 3 consecutive list failures asked for growing waits.
    let waits = env.clock.requested();
    assert!(waits.len() >= 3, "{waits:?}");
}

#[tokio::test]
async fn lost_create_answers_never_duplicate() {
    for how in [Loss::Drop, Loss::ServerError] {
        let env = setup(FakeOptions::default(), |s| s.firewall = true).await;
        env.fake.inject(Fault::LoseResponse {
            operation: "droplets_create".into(),
            count: 2,
            how,
        });
        env.fake.inject(Fault::LoseResponse {
            operation: "vpcs_create".into(),
            count: 1,
            how,
        });
        env.fake.inject(Fault::LoseResponse {
            operation: "firewalls_create".into(),
            count: 1,
            how,
        });
        let client = env.client();
        // 12 hosts: two batches (10 + 2), both answers lost.
        let want = names("h", 12);
        let report = reconcile(&client, &env.target("apiary-lost", &want))
            .await
            .expect("reconcile");
        assert_eq!(report.recovered.len(), 12, "{how:?}: {report}");
        assert!(report.created.is_empty());
        assert!(report.is_ready());
        env.assert_no_duplicates();
        assert_eq!(env.fake.droplets().len(), 12);
        assert_eq!(
            env.count_requests("droplets_create"),
            2,
            "{how:?}: a create was sent again"
        );
        let vpcs: Vec<_> = env
            .fake
            .vpcs()
            .into_iter()
            .filter(|v| v.name == "apiary-lost-vpc")
            .collect();
        assert_eq!(vpcs.len(), 1, "{how:?}");
        assert!(report.vpc.created);
        assert_eq!(env.fake.firewalls().len(), 1, "{how:?}");
        let down = teardown(&client, &tag_name("apiary-lost"))
            .await
            .expect("teardown");
        assert!(
            down.is_complete() && env.fake.droplets().is_empty(),
            "{down}"
        );
        assert!(env.fake.firewalls().is_empty());
        env.assert_spec_clean();
    }
}

#[tokio::test]
async fn a_create_that_times_out_is_adopted_not_repeated() {
    let env = setup(FakeOptions::default(), |s| {
        s.request_timeout = Duration::from_millis(400)
    })
    .await;
    env.fake.inject(Fault::Slow {
        operation: op("droplets_create"),
        count: 1,
        delay: Duration::from_millis(1500),
    });
    // A slow read within the timeout is just slow.
    env.fake.inject(Fault::Slow {
        operation: op("vpcs_list"),
        count: 1,
        delay: Duration::from_millis(100),
    });
    let report = survive(&env, "apiary-slow", 3).await;
    assert_eq!(report.recovered.len(), 3, "{report}");
    assert_eq!(env.count_requests("droplets_create"), 1);
}

#[tokio::test]
async fn slow_reads_past_the_timeout_are_retried() {
    let env = setup(FakeOptions::default(), |s| {
        s.request_timeout = Duration::from_millis(300)
    })
    .await;
    env.fake.inject(Fault::Slow {
        operation: op("droplets_list"),
        count: 2,
        delay: Duration::from_millis(800),
    });
    let client = env.client();
    let listed = client
        .list_droplets_by_tag("none")
        .await
        .expect("third try");
    assert!(listed.is_empty());
    let stats = client.stats();
    assert_eq!(stats.transport_errors, 2, "{stats:?}");
    assert_eq!(stats.requests, 3);
}

#[tokio::test]
async fn a_droplet_stuck_in_new_is_reported() {
    let options = FakeOptions {
        stuck_names: HashSet::from(["h-2".to_owned()]),
        ..FakeOptions::default()
    };
    let env = setup(options, |s| s.boot_timeout = Duration::from_millis(600)).await;
    let client = env.client();
    let report = reconcile(&client, &env.target("apiary-stuck", &names("h", 3)))
        .await
        .expect("reconcile");
    assert_eq!(report.stuck, vec!["h-2".to_owned()], "{report}");
    assert!(!report.is_ready());
    assert!(report.to_string().contains("stuck in `new`: h-2"));
    let h1 = report.host("h-1").expect("h-1");
    assert!(h1.private_ipv4.is_some());
    let h2 = report.host("h-2").expect("h-2");
    assert!(h2.private_ipv4.is_none(), "no addresses before active");
    // Reconciling again does not create a second h-2.
    let again = reconcile(&client, &env.target("apiary-stuck", &names("h", 3)))
        .await
        .expect("again");
    assert!(again.created.is_empty());
    env.assert_no_duplicates();
    teardown(&client, &tag_name("apiary-stuck"))
        .await
        .expect("teardown");
    assert!(env.fake.droplets().is_empty());
    env.assert_spec_clean();
}

#[tokio::test]
async fn giving_up_leaks_nothing_and_the_next_run_finishes() {
    let env = setup(FakeOptions::default(), |_| {}).await;
    let client = env.client();
    let attempts = client.policy().max_attempts;
    env.fake.inject(Fault::ServerError {
        operation: op("droplets_create"),
        count: attempts,
    });
    let err = reconcile(&client, &env.target("apiary-give-up", &names("h", 2)))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::CreateGaveUp { .. }), "{err}");
    assert!(err.to_string().contains("run reconcile again"), "{err}");
    assert!(env.fake.droplets().is_empty());
    survive(&env, "apiary-give-up", 2).await;
}

#[tokio::test]
async fn random_429s_and_500s() {
    let options = FakeOptions {
        random: Some(RandomFaults {
            rate_limit: 0.10,
            server_error: 0.05,
            server_error_after_apply: true,
            seed: 7,
        }),
        ..FakeOptions::default()
    };
    let env = setup(options, |s| s.firewall = true).await;
    survive(&env, "apiary-random", 24).await;
    let faults = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert!(faults > 0, "the seed produced no fault");
}

#[tokio::test]
async fn a_wrong_token_is_an_api_error_without_the_token() {
    let env = setup(FakeOptions::default(), |_| {}).await;
    let mut env_vars = std::collections::HashMap::new();
    env_vars.insert(
        apiary_digitalocean::TOKEN_VAR,
        "dop_v1_wrong-secret-value".to_owned(),
    );
    env_vars.insert("DIGITALOCEAN_API_URL", env.fake.url());
    let config = apiary_digitalocean::DigitalOceanSpec::new()
        .validate(|k| env_vars.get(k).cloned())
        .expect("config");
    let client = Client::new(&config).expect("client");
    let err = reconcile(&client, &env.target("apiary-401", &names("h", 1)))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("droplets_list") && text.contains("401") && text.contains("unauthorized"),
        "{text}"
    );
    assert!(!text.contains("wrong-secret-value"));
    assert!(!format!("{err:?}{client:?}{config:?}").contains("wrong-secret-value"));
    assert!(env.fake.droplets().is_empty());
}
