//! `preflight` against the fake: every refusal is typed, names what to
//! change, and leaves the account exactly as it was (only reads were sent:
//! no tag, VPC, firewall or droplet); a spec that fits passes and says
//! what it counted.

// Tests panic on the unexpected by design.
#![allow(clippy::unwrap_used)]

mod common;

use apiary_digitalocean::fake::FakeOptions;
use apiary_digitalocean::{
    DigitalOceanSpec, HostName, PreflightReport, PreflightTarget, ProviderError, preflight,
};
use common::{Env, names, setup, tag_name};

const TAG: &str = "apiary-pre";

fn hosts(n: usize) -> Vec<HostName> {
    names("pre", n)
        .iter()
        .map(|n| HostName::parse(n).unwrap())
        .collect()
}

async fn run(env: &Env, hosts: &[HostName]) -> Result<PreflightReport, ProviderError> {
    let tag = tag_name(TAG);
    preflight(
        &env.client(),
        &PreflightTarget {
            droplet: &env.config.droplet,
            tag: &tag,
            hosts,
        },
    )
    .await
}

/// Only reads went out, and the fake holds nothing it did not hold before
/// (`droplets_before` seeded droplets and their tags).
fn assert_nothing_created(env: &Env, droplets_before: usize) {
    let seeded_tags: std::collections::BTreeSet<String> = env
        .fake
        .droplets()
        .into_iter()
        .flat_map(|d| d.tags)
        .collect();
    let writes: Vec<_> = env
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(writes.is_empty(), "preflight wrote: {writes:?}");
    assert_eq!(env.fake.droplets().len(), droplets_before);
    assert!(
        env.fake.firewalls().is_empty(),
        "{:?}",
        env.fake.firewalls()
    );
    assert!(
        env.fake.vpcs().iter().all(|v| v.default),
        "a VPC was made: {:?}",
        env.fake.vpcs()
    );
    assert!(
        env.fake.tags().iter().all(|t| seeded_tags.contains(t)),
        "a tag was made: {:?}",
        env.fake.tags()
    );
    env.assert_spec_clean();
}

#[tokio::test]
async fn a_spec_that_fits_passes_and_reports_what_it_counted() {
    let env = setup(
        FakeOptions {
            droplet_limit: 5,
            ..FakeOptions::default()
        },
        |_| {},
    )
    .await;
    env.fake.seed_droplet("someone-elses", &["web"]);
    // Already the cluster's (tag spelt differently: tags are case-blind).
    env.fake.seed_droplet("pre-1", &["Apiary-Pre"]);
    // 2 exist, pre-2..pre-4 are new: 2 + 3 = 5, exactly the limit.
    let report = run(&env, &hosts(4)).await.expect("fits");
    assert_eq!(report.droplet_limit, Some(5));
    assert_eq!(report.droplets_in_account, 2);
    assert_eq!(report.droplets_to_create, 3);
    assert_eq!(report.image_id, 150_000_001, "debian-12-x64 by slug");
    assert_nothing_created(&env, 2);
    assert_eq!(env.count_requests("images_get"), 1);
}

#[tokio::test]
async fn over_the_droplet_limit_is_refused_naming_the_numbers() {
    let env = setup(
        FakeOptions {
            droplet_limit: 5,
            ..FakeOptions::default()
        },
        |_| {},
    )
    .await;
    env.fake.seed_droplet("someone-elses", &["web"]);
    env.fake.seed_droplet("another", &[]);
    env.fake.seed_droplet("pre-1", &[TAG]);
    // 3 exist, pre-2..pre-4 are new: 3 + 3 = 6 > 5.
    let err = run(&env, &hosts(4)).await.unwrap_err();
    let ProviderError::DropletLimit {
        needed,
        existing,
        limit,
    } = err
    else {
        panic!("expected DropletLimit, got {err}")
    };
    assert_eq!((needed, existing, limit), (3, 3, 5));
    let err = run(&env, &hosts(4)).await.unwrap_err();
    assert!(err.is_refusal(), "{err}");
    let text = err.to_string();
    for part in [
        "3 more droplet",
        "already has 3",
        "limit is 5",
        "provider.hosts",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    assert_nothing_created(&env, 3);

    // The droplets that already carry the tag need no new slot: with all
    // four there, nothing is needed and even a full account passes.
    for n in ["pre-2", "pre-3", "pre-4"] {
        env.fake.seed_droplet(n, &[TAG]);
    }
    let report = run(&env, &hosts(4)).await.expect("nothing to create");
    assert_eq!(report.droplets_to_create, 0);
    assert_eq!(
        report.droplets_in_account, 6,
        "over the limit already, adds none"
    );
}

#[tokio::test]
async fn an_unknown_image_is_refused_by_slug_and_by_id() {
    for image in ["debian-99-x64", "424242"] {
        let env = setup(FakeOptions::default(), |s| s.image = Some(image.into())).await;
        let err = run(&env, &hosts(2)).await.unwrap_err();
        let ProviderError::ImageUnknown { image: named } = &err else {
            panic!("expected ImageUnknown for {image}, got {err}")
        };
        assert_eq!(named, image);
        assert!(err.is_refusal());
        let text = err.to_string();
        assert!(
            text.contains("digitalocean.image") && text.contains("list-distribution"),
            "names the key and the way out: {text}"
        );
        assert_nothing_created(&env, 0);
    }
    // A known image by its numeric id passes.
    let env = setup(FakeOptions::default(), |s| {
        s.image = Some("150000002".into())
    })
    .await;
    assert_eq!(
        run(&env, &hosts(1)).await.expect("by id").image_id,
        150_000_002
    );
}

#[tokio::test]
async fn region_size_ssh_key_and_account_refusals_create_nothing() {
    type Edit = Box<dyn Fn(&mut DigitalOceanSpec)>;
    let cases: Vec<(&str, Edit, FakeOptions)> = vec![
        (
            "region",
            Box::new(|s| s.region = Some("sfo1".into())),
            FakeOptions::default(),
        ),
        (
            "size",
            Box::new(|s| s.size = Some("s-64vcpu-1tb".into())),
            FakeOptions::default(),
        ),
        (
            "ssh key",
            Box::new(|s| s.ssh_keys = vec!["12345".into()]),
            FakeOptions::default(),
        ),
        (
            "account",
            Box::new(|_| {}),
            FakeOptions {
                account_status: ("locked".into(), "billing overdue".into()),
                ..FakeOptions::default()
            },
        ),
    ];
    for (what, edit, options) in cases {
        let env = setup(options, |s| edit(s)).await;
        let err = run(&env, &hosts(3)).await.unwrap_err();
        let matched = match what {
            "region" => matches!(&err, ProviderError::RegionUnavailable { region, available }
                if region == "sfo1" && available.contains("nyc3")),
            "size" => matches!(&err, ProviderError::SizeUnavailable { size, .. }
                if size == "s-64vcpu-1tb"),
            "ssh key" => matches!(&err, ProviderError::SshKeyUnknown { key } if key == "12345"),
            _ => matches!(&err, ProviderError::AccountNotActive { status, message }
                if status == "locked" && message == "billing overdue"),
        };
        assert!(matched, "{what}: unexpected {err}");
        assert!(err.is_refusal(), "{what}: {err}");
        assert_nothing_created(&env, 0);
    }
}

#[tokio::test]
async fn a_failing_api_is_not_a_refusal() {
    use apiary_digitalocean::fake::Fault;
    let env = setup(FakeOptions::default(), |_| {}).await;
    env.fake.inject(Fault::ServerError {
        operation: Some("images_get".into()),
        count: 100,
    });
    let err = run(&env, &hosts(1)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Api(_)), "{err}");
    assert!(!err.is_refusal(), "a 500 may pass on retry: {err}");
    assert_nothing_created(&env, 0);
}
