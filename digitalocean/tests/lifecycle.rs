//! The provider's life cycle against the fake: create 4, adopt after a
//! restart, scale to 6 and back to 4, teardown leaves nothing. Every
//! exchange is held to the OpenAPI spec.

// Tests panic on the unexpected by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use apiary_digitalocean::fake::FakeOptions;
use apiary_digitalocean::reconcile::vpc_marker;
use apiary_digitalocean::{DropletStatus, HostName, Ipv4Cidr, reconcile, remove, teardown};
use common::{names, setup, tag_name};

#[tokio::test]
async fn create_adopt_scale_and_teardown() {
    let env = setup(FakeOptions::default(), |s| {
        s.firewall = true;
        s.public_tcp_ports = vec![7443];
        s.admin_cidrs = vec!["203.0.113.7/32".into()];
        s.tags = vec!["env:test".into()];
    })
    .await;
    let tag = "apiary-life";

    // Create 4.
    let client = env.client();
    let four = names("node", 4);
    let report = reconcile(&client, &env.target(tag, &four))
        .await
        .expect("reconcile 4");
    assert_eq!(report.created.len(), 4, "{report}");
    assert!(report.adopted.is_empty() && report.recovered.is_empty());
    assert!(report.is_ready(), "{report}");
    assert!(report.vpc.created);
    let range = Ipv4Cidr::parse(report.vpc.ip_range.as_deref().expect("range")).expect("cidr");
    for h in &report.hosts {
        assert_eq!(h.status, DropletStatus::Active);
        let private = h.private_ipv4.expect("private address");
        assert!(range.contains(private), "{private} outside {range}");
        assert!(h.public_ipv4.is_some());
    }
    // One multi-create for four hosts with the same user_data.
    assert_eq!(env.count_requests("droplets_create"), 1);
    assert_eq!(env.droplet_names(), four);
    for d in env.fake.droplets() {
        assert!(d.tags.contains(&tag.to_owned()) && d.tags.contains(&"env:test".to_owned()));
        assert_eq!(d.vpc_uuid, report.vpc.id);
        assert_eq!(d.user_data.as_deref(), Some("#cloud-config\n{}\n"));
    }
    let fw = env.fake.firewalls();
    assert_eq!(fw.len(), 1);
    assert_eq!(fw[0].tags, vec![tag.to_owned()]);
    let inbound = fw[0].inbound_rules.as_array().expect("rules");
    let public: BTreeSet<&str> = inbound
        .iter()
        .filter(|r| {
            r["sources"]["addresses"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "0.0.0.0/0"))
        })
        .filter_map(|r| r["ports"].as_str())
        .collect();
    assert_eq!(public, BTreeSet::from(["7443"]), "SSH is not open to all");
    // SSH from the operator's network only, through the API as it took it.
    let ssh: Vec<_> = inbound.iter().filter(|r| r["ports"] == "22").collect();
    assert_eq!(ssh.len(), 1, "{inbound:?}");
    assert_eq!(
        ssh[0]["sources"]["addresses"],
        serde_json::json!(["203.0.113.7/32"])
    );
    // ICMP from the VPC only, in a form the spec accepts (checked below).
    let icmp: Vec<_> = inbound.iter().filter(|r| r["protocol"] == "icmp").collect();
    assert_eq!(icmp.len(), 1, "{inbound:?}");
    assert_eq!(
        icmp[0]["sources"]["addresses"],
        serde_json::json!([range.to_string()])
    );
    env.assert_spec_clean();

    // Adopt after a restart: a new client, same tag, nothing created.
    let creates_before = env.count_requests("droplets_create");
    let restarted = env.client();
    let report = reconcile(&restarted, &env.target(tag, &four))
        .await
        .expect("adopt");
    assert!(report.created.is_empty(), "{report}");
    assert_eq!(report.adopted.len(), 4);
    assert!(!report.vpc.created && !report.firewall.as_ref().expect("fw").created);
    assert_eq!(env.count_requests("droplets_create"), creates_before);
    assert_eq!(env.fake.droplets().len(), 4);
    assert_eq!(env.fake.firewalls().len(), 1);
    // An adopt of a ready cluster is cheap: list droplets, VPCs, firewalls.
    assert_eq!(restarted.stats().requests, 3, "{:?}", restarted.stats());

    // Scale to 6: two more, in one request.
    let six = names("node", 6);
    let report = reconcile(&restarted, &env.target(tag, &six))
        .await
        .expect("scale up");
    assert_eq!(
        report.created,
        vec!["node-5".to_owned(), "node-6".to_owned()]
    );
    assert_eq!(report.adopted.len(), 4);
    assert_eq!(env.count_requests("droplets_create"), creates_before + 1);
    assert_eq!(env.droplet_names(), {
        let mut n = six.clone();
        n.sort();
        n
    });

    // Back to 4: reconcile reports the surplus, never deletes it...
    let report = reconcile(&restarted, &env.target(tag, &four))
        .await
        .expect("scale down");
    let surplus: Vec<&str> = report.surplus.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(surplus, vec!["node-5", "node-6"], "{report}");
    assert_eq!(env.fake.droplets().len(), 6);
    // ...removal is the coordinator's explicit call, after draining.
    let removed = remove(
        &restarted,
        &tag_name(tag),
        &[
            HostName::parse("node-5").unwrap(),
            HostName::parse("node-6").unwrap(),
            HostName::parse("node-9").unwrap(),
        ],
    )
    .await
    .expect("remove");
    assert_eq!(removed.deleted.len(), 2, "{removed}");
    assert_eq!(removed.not_found, vec!["node-9".to_owned()]);
    assert!(removed.to_string().contains("node-5"));
    let report = reconcile(&restarted, &env.target(tag, &four))
        .await
        .expect("steady");
    assert!(report.surplus.is_empty() && report.created.is_empty());
    assert_eq!(env.droplet_names(), four);

    // Teardown leaves nothing it created.
    let vpcs_before = env.fake.vpcs().len();
    let report = teardown(&restarted, &tag_name(tag))
        .await
        .expect("teardown");
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.droplets.len(), 4);
    assert_eq!(report.firewalls.len(), 1);
    assert_eq!(report.vpcs.len(), 1);
    let text = report.to_string();
    for n in &four {
        assert!(text.contains(n.as_str()), "{text}");
    }
    assert!(env.fake.droplets().is_empty());
    assert!(env.fake.firewalls().is_empty());
    assert_eq!(env.fake.vpcs().len(), vpcs_before - 1);
    assert!(
        env.fake
            .vpcs()
            .iter()
            .all(|v| v.description != vpc_marker(&tag_name(tag)))
    );
    // A second teardown finds nothing and says so.
    let again = teardown(&restarted, &tag_name(tag))
        .await
        .expect("teardown again");
    assert!(again.droplets.is_empty() && again.vpcs.is_empty() && again.firewalls.is_empty());
    assert!(again.to_string().contains("no droplet had the tag"));

    env.assert_spec_clean();
    env.assert_no_duplicates();
}

#[tokio::test]
async fn droplets_of_other_clusters_and_untagged_ones_are_never_touched() {
    let env = setup(FakeOptions::default(), |_| {}).await;
    let stranger = env.fake.seed_droplet("node-1", &["someone-else"]);
    let untagged = env.fake.seed_droplet("node-2", &[]);
    let client = env.client();
    let report = reconcile(&client, &env.target("apiary-mine", &names("node", 2)))
        .await
        .expect("reconcile");
    // Same names, other tag: not adopted, not deleted; ours are created.
    assert_eq!(report.created.len(), 2);
    let report = teardown(&client, &tag_name("apiary-mine"))
        .await
        .expect("teardown");
    assert_eq!(report.droplets.len(), 2);
    let left: Vec<u64> = env.fake.droplets().iter().map(|d| d.id).collect();
    assert_eq!(left, vec![stranger, untagged]);
    env.assert_spec_clean();
}

#[tokio::test]
async fn a_user_made_vpc_is_used_and_kept() {
    let env = setup(FakeOptions::default(), |s| {
        s.vpc = Some("my-net".into());
        s.vpc_ip_range = Some("10.77.0.0/24".into());
    })
    .await;
    let client = env.client();
    // The user made the VPC beforehand (as with doctl): no apiary marker.
    let made = client
        .create_vpc("my-net", "nyc3", "made by hand", Some("10.77.0.0/24"))
        .await
        .expect("vpc");
    let report = reconcile(&client, &env.target("apiary-byo", &names("db", 2)))
        .await
        .expect("reconcile");
    assert!(!report.vpc.created);
    assert_eq!(report.vpc.id, made.id);
    for h in &report.hosts {
        let ip = h.private_ipv4.expect("private");
        assert!(Ipv4Cidr::parse("10.77.0.0/24").unwrap().contains(ip));
    }
    let report = teardown(&client, &tag_name("apiary-byo"))
        .await
        .expect("teardown");
    assert!(report.vpcs.is_empty(), "{report}");
    assert!(env.fake.vpcs().iter().any(|v| v.id == made.id));
    env.assert_spec_clean();
}

#[tokio::test]
async fn pagination_reads_every_page() {
    let env = setup(FakeOptions::default(), |_| {}).await;
    for i in 1..=450 {
        env.fake.seed_droplet(&format!("big-{i}"), &["apiary-big"]);
    }
    let client = env.client();
    let listed = client
        .list_droplets_by_tag("apiary-big")
        .await
        .expect("list");
    assert_eq!(listed.len(), 450);
    let pages: Vec<String> = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.operation.as_deref() == Some("droplets_list"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(pages.len(), 3, "200 + 200 + 50");
    // A target naming them all adopts all 450, creates none.
    let started = std::time::Instant::now();
    let report = reconcile(&client, &env.target("apiary-big", &names("big", 450)))
        .await
        .expect("reconcile");
    assert_eq!(report.adopted.len(), 450);
    assert!(report.created.is_empty());
    assert!(started.elapsed() < Duration::from_secs(20));
    env.assert_spec_clean();
}
