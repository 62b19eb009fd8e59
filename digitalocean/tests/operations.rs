//! Every operation of the spec (and supplement) through the client, against
//! the fake, with every request and answer validated.

// Tests panic on the unexpected by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use apiary_digitalocean::fake::{FakeOptions, SpecValidator};
use apiary_digitalocean::model::{DropletActionType, DropletStatus};
use apiary_digitalocean::{Client, DigitalOceanSpec, TOKEN_VAR, reconcile, teardown};
use common::{names, setup, tag_name};

#[tokio::test]
async fn every_operation_is_exercised_and_valid() {
    let env = setup(FakeOptions::default(), |s| s.firewall = true).await;
    let client = env.client();

    // reconcile + teardown cover droplets, tags, VPCs and firewalls.
    let report = reconcile(&client, &env.target("apiary-ops", &names("op", 2)))
        .await
        .expect("reconcile");
    let id = report.hosts[0].id;

    let account = client.account().await.expect("account");
    assert_eq!(account.status.as_deref(), Some("active"));
    assert!(
        client
            .list_regions()
            .await
            .expect("regions")
            .iter()
            .any(|r| r.slug == "nyc3")
    );
    assert!(
        client
            .list_sizes()
            .await
            .expect("sizes")
            .iter()
            .any(|s| s.slug == "s-2vcpu-4gb")
    );
    use apiary_digitalocean::config::ImageRef;
    let by_slug = client
        .get_image(&ImageRef::Slug("ubuntu-24-04-x64".into()))
        .await
        .expect("image")
        .expect("a public image");
    assert_eq!(by_slug.slug.as_deref(), Some("ubuntu-24-04-x64"));
    let by_id = client
        .get_image(&ImageRef::Id(by_slug.id))
        .await
        .expect("image by id")
        .expect("the same image");
    assert_eq!(by_id, by_slug);
    assert!(
        client
            .get_image(&ImageRef::Slug("no-such-image".into()))
            .await
            .expect("404 is None")
            .is_none()
    );
    let key = client
        .create_ssh_key(
            "laptop",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample apiary@test",
        )
        .await
        .expect("ssh key");
    let keys = client.list_ssh_keys().await.expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].fingerprint, key.fingerprint);

    let d = client.get_droplet(id).await.expect("get").expect("exists");
    assert_eq!(d.status, DropletStatus::Active);
    assert!(client.get_droplet(1).await.expect("get missing").is_none());
    let action = client
        .droplet_action(id, DropletActionType::Reboot)
        .await
        .expect("action");
    assert_eq!(action.kind.as_deref(), Some("reboot"));

    let vpc = client
        .get_vpc(&report.vpc.id)
        .await
        .expect("vpc")
        .expect("exists");
    assert_eq!(vpc.name, "apiary-ops-vpc");
    let fw_id = report.firewall.as_ref().expect("firewall").id.clone();
    let fw = client
        .get_firewall(&fw_id)
        .await
        .expect("fw")
        .expect("exists");
    assert_eq!(fw.tags.as_deref(), Some(&["apiary-ops".to_owned()][..]));
    client
        .assign_firewall_droplets(&fw_id, &[id])
        .await
        .expect("assign");
    client.create_tag("extra").await.expect("tag");
    client
        .add_firewall_tags(&fw_id, &["extra".to_owned()])
        .await
        .expect("fw tags");
    client
        .tag_droplets("extra", &[id])
        .await
        .expect("tag droplet");
    assert!(
        env.fake
            .droplets()
            .iter()
            .any(|d| d.id == id && d.tags.contains(&"extra".to_owned()))
    );

    // Deletes one by one (teardown uses the by-tag form).
    assert!(
        client
            .delete_droplet(report.hosts[1].id)
            .await
            .expect("delete")
    );
    assert!(
        !client
            .delete_droplet(report.hosts[1].id)
            .await
            .expect("delete again")
    );
    let down = teardown(&client, &tag_name("apiary-ops"))
        .await
        .expect("teardown");
    assert_eq!(down.droplets.len(), 1);
    assert!(!client.delete_firewall(&fw_id).await.expect("already gone"));
    assert!(
        !client
            .delete_vpc(&report.vpc.id)
            .await
            .expect("already gone")
    );

    // The default VPC cannot be deleted: the API's 403 comes back as advice.
    let default = client
        .list_vpcs()
        .await
        .expect("vpcs")
        .into_iter()
        .find(|v| v.default)
        .expect("default vpc");
    let err = client.delete_vpc(&default.id).await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(
        err.to_string().contains("delete_vpc") && err.to_string().contains("forbidden"),
        "{err}"
    );
    client
        .delete_droplets_by_tag("extra")
        .await
        .expect("delete by tag");

    let key_id = key.id.expect("the key's id");
    assert!(client.delete_ssh_key(key_id).await.expect("delete key"));
    assert!(!client.delete_ssh_key(key_id).await.expect("gone already"));
    assert!(client.list_ssh_keys().await.expect("keys").is_empty());

    env.assert_spec_clean();
    let used: BTreeSet<String> = env
        .fake
        .requests()
        .into_iter()
        .filter_map(|r| r.operation)
        .collect();
    let all: BTreeSet<String> = SpecValidator::load()
        .expect("spec")
        .operation_ids()
        .into_iter()
        .collect();
    let missing: Vec<_> = all.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "operations never exercised: {missing:?}"
    );
}

// preflight's refusals and acceptances: tests/preflight.rs.

#[test]
fn an_https_client_builds_with_the_ring_provider() {
    // No request is sent: this checks the TLS set-up (ring, platform
    // verifier) does not need a process-wide crypto provider.
    let config = DigitalOceanSpec::new()
        .validate(|k| (k == TOKEN_VAR).then(|| "dop_v1_x".to_owned()))
        .expect("config");
    assert_eq!(config.api_url.as_str(), "https://api.digitalocean.com/");
    let client = Client::new(&config).expect("https client");
    assert_eq!(client.base_url().scheme(), "https");
}

/// The crate's copy of the spec is the shared one (when `shared/` is beside
/// the checkout, as on developers' machines and in CI).
#[test]
fn the_spec_copy_matches_shared() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = dir.join("../../shared/digitalocean/openapi-subset.yaml");
    let Ok(upstream) = std::fs::read(&shared) else {
        eprintln!("{} not present; nothing to compare", shared.display());
        return;
    };
    let copy = std::fs::read(dir.join("openapi/openapi-subset.yaml")).expect("crate copy");
    assert!(
        upstream == copy,
        "openapi/openapi-subset.yaml differs from {}: copy it again",
        shared.display()
    );
}
