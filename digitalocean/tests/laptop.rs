//! What the droplet simulator's laptop mode asks of the fake: public
//! addresses from a range of its choosing, and the public keys of the SSH
//! keys a create named kept on the droplet (for root's `authorized_keys`).

// Tests panic on the unexpected by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;

use apiary_digitalocean::fake::FakeOptions;
use apiary_digitalocean::model::{DropletCreate, ImageValue, SshKeyValue};
use common::setup;

#[tokio::test]
async fn droplets_take_public_addresses_from_the_range_and_keep_their_ssh_keys() {
    let options = FakeOptions {
        public_range: Some(Ipv4Addr::new(198, 18, 0, 100)..=Ipv4Addr::new(198, 18, 0, 101)),
        ..Default::default()
    };
    let env = setup(options, |_| {}).await;
    let client = env.client();
    let laptop = client
        .create_ssh_key(
            "laptop",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIlaptop op@laptop",
        )
        .await
        .expect("key");
    let spare = client
        .create_ssh_key(
            "spare",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIspare op@spare",
        )
        .await
        .expect("key");
    let create = |names: &[&str], keys: Vec<SshKeyValue>| DropletCreate {
        name: None,
        names: Some(names.iter().map(|n| n.to_string()).collect()),
        region: "nyc3".into(),
        size: "s-1vcpu-1gb".into(),
        image: ImageValue::Slug("ubuntu-24-04-x64".into()),
        ssh_keys: keys,
        tags: vec![],
        user_data: None,
        vpc_uuid: None,
    };
    client
        .create_droplets(&create(
            &["a", "b"],
            vec![
                SshKeyValue::Id(laptop.id.unwrap()),
                SshKeyValue::Fingerprint(spare.fingerprint.clone().unwrap()),
            ],
        ))
        .await
        .expect("create");
    client
        .create_droplets(&create(&["c"], vec![]))
        .await
        .expect("create");
    let droplets = env.fake.droplets();
    let public: Vec<Ipv4Addr> = droplets.iter().map(|d| d.public_ipv4).collect();
    // The range's two addresses, then round again.
    assert_eq!(
        public,
        [
            Ipv4Addr::new(198, 18, 0, 100),
            Ipv4Addr::new(198, 18, 0, 101),
            Ipv4Addr::new(198, 18, 0, 100)
        ]
    );
    assert_eq!(
        droplets[0].ssh_keys,
        [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIlaptop op@laptop",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIspare op@spare"
        ]
    );
    assert_eq!(droplets[1].ssh_keys, droplets[0].ssh_keys);
    assert!(droplets[2].ssh_keys.is_empty());
    env.assert_spec_clean();
}
