//! apiary's DigitalOcean provider: turns a cluster's desired host list into
//! droplets, through the DigitalOcean API v2, and boots the agent on each
//! through cloud-init. It replaces the recipe's `docker-machine create -d
//! digitalocean` plus SSH provisioning; no SSH and no key-value host.
//!
//! # Model
//!
//! - **Identity is the cluster tag.** Every droplet carries it (and the
//!   firewall names it); every listing is by it; nothing without it is ever
//!   modified or deleted. A droplet's name is the host's name. So a
//!   coordinator that restarts at any point, even without its state, finds
//!   its hosts again with one listing and adopts them.
//! - **[`reconcile()`]** lists by tag (all pages), ensures the tag, the VPC
//!   (created if absent) and the optional Cloud Firewall, creates the missing
//!   hosts (up to ten per request when their user_data is identical; a host
//!   whose user_data is `None` is adopted, never created), waits
//!   for `active` until `boot_timeout`, and returns each host's id, public and
//!   private IPv4 ([`ReconcileReport`]). Deciding is a pure function
//!   ([`plan`]); the rest is I/O. [`ensure_vpc`] does the VPC step alone,
//!   for a caller that needs the range first (it goes into user_data as
//!   the agent's `private_cidr`).
//! - **Never a duplicate.** A create whose answer is lost (5xx, timeout,
//!   dropped connection) may still have happened: the client reports
//!   [`ApiError::OutcomeUnknown`] instead of retrying, and reconcile lists the
//!   tag again and adopts by name before sending anything else.
//! - **Check before creating.** [`preflight()`] only reads: the account is
//!   active, the droplets still to create (hosts with no droplet carrying the
//!   tag) fit under its droplet limit on top of every droplet it has, the
//!   region, size and image exist and match, the SSH keys are known. Its
//!   refusals are typed ([`ProviderError::is_refusal`]) and name the setting
//!   and what to do; the coordinator runs it before anything is created.
//! - **Removal is explicit.** Surplus droplets are reported, never deleted by
//!   reconcile: the coordinator drains them (Swarm, database) and then calls
//!   [`remove`]. [`teardown`] deletes everything with the tag, the cluster's
//!   firewall and the VPC this crate created, and reports what it deleted.
//! - **HTTP** ([`Client`]): every request has a timeout; lists follow
//!   `links.pages.next` at 200 per page and are re-read if they change under
//!   paging; 429 waits for `retry-after` or `ratelimit-reset`; 5xx and
//!   transport errors back off exponentially with jitter (idempotent requests
//!   only). Time is an injected [`Clock`], so tests and the benchmark can
//!   shrink waits and still check them.
//! - **Secrets.** The API token comes only from `DIGITALOCEAN_ACCESS_TOKEN`,
//!   is refused first when missing, has a redacted `Debug` and no `Display`,
//!   travels only over https (plain http only to loopback, for the fake), and
//!   is never sent to a pagination link on another origin or along a
//!   redirect. user_data carries no secret but the join token
//!   ([`render_user_data`] refuses a private key passed as the CA).
//!
//! # Use
//!
//! ```no_run
//! # async fn demo(spec: apiary_digitalocean::DigitalOceanSpec) -> Result<(), Box<dyn std::error::Error>> {
//! use apiary_digitalocean::*;
//! let config = spec.validate_from_env()?; // token checked first
//! let client = Client::new(&config)?;
//! let tag = TagName::parse("apiary-prod")?;
//! let mut bootstrap = Bootstrap::new(
//!     "10.20.0.2:7443",
//!     "APIARY-1-<digest>-<secret>",
//!     "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
//!     AgentSource::for_config(
//!         &config,
//!         "https://10.20.0.2:7444/v1/agent/linux-x86_64".parse()?,
//!         "<sha256 of the served binary, 64 hex digits>".into(),
//!     ),
//! );
//! bootstrap.systemd_unit = Some(std::fs::read_to_string("deploy/systemd/apiary-agent.service")?);
//! let user_data = render_user_data(&bootstrap)?; // shared: no node_name
//! let hosts = (1..=4)
//!     .map(|i| HostName::parse(&format!("node-{i}")).map(|name| HostSpec { name, user_data: Some(user_data.clone()) }))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();
//! preflight(&client, &PreflightTarget { droplet: &config.droplet, tag: &tag, hosts: &names }).await?; // reads only
//! let report = reconcile(&client, &ClusterTarget::new(&config, tag.clone(), hosts)).await?;
//! println!("{report}");
//! // later: drain node-4, then
//! remove(&client, &tag, &[HostName::parse("node-4")?]).await?;
//! println!("{}", teardown(&client, &tag).await?);
//! # Ok(()) }
//! ```
//!
//! # The fake
//!
//! With the `fake` feature, [`fake::FakeServer`] is a local DigitalOcean API
//! on 127.0.0.1 with in-memory droplets, VPCs, tags and firewalls, and fault
//! injection (429 bursts, 500s, slow answers, droplets stuck in `new`,
//! creates whose answer is lost). It checks every request and every answer
//! against the OpenAPI spec (`openapi/openapi-subset.yaml`, a copy of
//! `shared/digitalocean/`, plus the operations in `openapi/supplement.yaml`)
//! and records violations, so it cannot drift from
//! the real API unnoticed. The `do-bench` binary measures a 100-droplet
//! reconcile against it.
//!
//! # Limitations
//!
//! - Firewall rules are created, never updated: drift is reported in
//!   [`ReconcileReport::notes`] (the subset has no update operation).
//! - Droplets are never moved between VPCs; one in the wrong VPC is reported.
//! - Three operations are outside the shared spec subset (`delete_firewall`,
//!   `delete_vpc` for teardown, `images_get` for preflight);
//!   `openapi/supplement.yaml` transcribes them from the upstream spec, and
//!   the fake validates them like the rest.
//! - The droplet limit is checked against `droplets_list` without a filter,
//!   which upstream lists non-GPU droplets only.
//! - Adopting after a lost create answer assumes a droplet is listed by tag
//!   as soon as its create was accepted (true of the API as documented: the
//!   202 carries the droplet, `new`). Should a listing ever lag, the second
//!   droplet shows up in [`ReconcileReport::duplicates`] for removal.
//! - The tag itself is left by teardown (it may label things apiary did not
//!   create).
//! - Hosts with per-host user_data (a per-node token) are created one per
//!   request; a shared user_data (node name from the hostname) allows ten.
//! - The agent's bootstrap retries forever (a systemd oneshot with
//!   `Restart=on-failure` and no start limit, see [`cloud_init`]), but
//!   nothing tells the coordinator a host is stuck before `boot_timeout`
//!   except the host never enrolling.
//! - user_data is readable from the droplet's metadata service by any local
//!   process: the coordinator puts a single-use, expiring host token in it
//!   (one per droplet, bound to its name), and its host firewall keeps
//!   containers away from 169.254.169.254.
//! - `DIGITALOCEAN_PRIVATE_NETWORKING` from the recipe is not read: private
//!   networking is always on (the VPC), as the API now requires.

pub mod client;
pub mod cloud_init;
pub mod config;
pub mod model;
pub mod reconcile;

#[cfg(feature = "fake")]
pub mod fake;

pub use client::{ApiError, CallStats, Client, Clock, RetryPolicy, SystemClock};
pub use cloud_init::{AgentSource, Bootstrap, RenderError, render_user_data};
pub use config::{
    API_URL_VAR, ConfigError, DigitalOceanConfig, DigitalOceanSpec, DropletSettings,
    FirewallSettings, HostName, Ipv4Cidr, SshKeyRef, TOKEN_VAR, TagName, VpcSettings,
};
pub use model::{Droplet, DropletStatus, MAX_NAMES_PER_CREATE, MAX_USER_DATA_BYTES, SshKey};
pub use reconcile::{
    ClusterTarget, HostSpec, HostState, Plan, PreflightReport, PreflightTarget, ProviderError,
    ReconcileReport, RemoveReport, TeardownOptions, TeardownReport, VpcState, droplets_to_create,
    ensure_vpc, plan, preflight, reconcile, remove, teardown, teardown_with,
};
