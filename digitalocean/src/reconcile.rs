//! Making the droplets match the cluster: [`reconcile`], [`remove`],
//! [`teardown`], and the account check [`preflight`].
//!
//! The cluster tag is the only identity: every droplet this crate creates
//! carries it, every listing is by it, and nothing without it is ever
//! touched. A droplet's name is the host's name, so "which host is this"
//! survives a coordinator that lost its state.
//!
//! Deciding is pure ([`plan`]); the functions here do the I/O around it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use tracing::{Instrument, info, info_span, warn};

use crate::client::{ApiError, Client};
use crate::config::{
    DigitalOceanConfig, DropletSettings, FirewallSettings, HostName, ImageRef, SSH_PORT, SshKeyRef,
    TagName, VpcSettings,
};
use crate::model::{
    Droplet, DropletCreate, DropletStatus, Firewall, FirewallCreate, FirewallRuleTarget,
    ImageValue, InboundRule, MAX_NAMES_PER_CREATE, MAX_USER_DATA_BYTES, OutboundRule, SshKeyValue,
    Vpc,
};

/// Errors of the provider's operations. API failures carry the operation
/// and the API's own message; the others say what to change.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Api(#[from] ApiError),

    #[error(
        "host {host}: user_data is {bytes} bytes, over the API's limit of {MAX_USER_DATA_BYTES}; \
         serve large files from the coordinator instead of embedding them"
    )]
    UserDataTooLarge { host: String, bytes: usize },

    #[error("host {host} appears more than once in the cluster target; host names must be unique")]
    DuplicateHost { host: String },

    #[error(
        "VPC {name} exists in region {found}, but the droplets go to {wanted}; \
         name another VPC in digitalocean.vpc or change digitalocean.region"
    )]
    VpcRegionMismatch {
        name: String,
        found: String,
        wanted: String,
    },

    #[error(
        "VPC {name} has no ip_range in the API's answer, so neither the firewall nor the agents' \
         private address can be scoped to it"
    )]
    VpcWithoutRange { name: String },

    #[error(
        "{what}: gave up after {attempts} attempts whose outcome was unknown (last: {last}); \
         run reconcile again: it adopts whatever was created"
    )]
    CreateGaveUp {
        what: String,
        attempts: u32,
        last: String,
    },

    #[error(
        "the DigitalOcean account is {status} ({message}); droplets cannot be created until it is active"
    )]
    AccountNotActive { status: String, message: String },

    #[error("region {region} is unknown or unavailable; available regions: {available}")]
    RegionUnavailable { region: String, available: String },

    #[error("size {size} is not available in region {region}; sizes there: {available}")]
    SizeUnavailable {
        size: String,
        region: String,
        available: String,
    },

    #[error(
        "SSH key {key} is not in the account (`doctl compute ssh-key list`); add it or remove it \
         from digitalocean.ssh_keys"
    )]
    SshKeyUnknown { key: String },

    #[error(
        "the cluster needs {needed} more droplet(s), but the account already has {existing} and \
         its droplet limit is {limit}; ask DigitalOcean support to raise the droplet limit, or \
         lower provider.hosts (or delete droplets the account no longer needs)"
    )]
    DropletLimit {
        needed: usize,
        existing: usize,
        limit: u64,
    },

    #[error(
        "digitalocean.image = {image:?} is not an image this account can use (the API knows no \
         image by that slug or id); pick a slug from `doctl compute image list-distribution`, \
         or the numeric id of one of your snapshots"
    )]
    ImageUnknown { image: String },

    #[error(
        "digitalocean.image = {image:?} is {status}, not available; wait until it is, or pick \
         another image"
    )]
    ImageNotAvailable { image: String, status: String },

    #[error(
        "digitalocean.image = {image:?} is not available in region {region} (only in {regions}); \
         transfer the image there, or change digitalocean.region"
    )]
    ImageNotInRegion {
        image: String,
        region: String,
        regions: String,
    },
}

impl ProviderError {
    /// The account or the settings cannot work as they are (a [`preflight`]
    /// refusal): a person has to change something before trying again,
    /// unlike a failed or unreachable API, which a retry may get past.
    pub fn is_refusal(&self) -> bool {
        match self {
            ProviderError::AccountNotActive { .. }
            | ProviderError::RegionUnavailable { .. }
            | ProviderError::SizeUnavailable { .. }
            | ProviderError::SshKeyUnknown { .. }
            | ProviderError::DropletLimit { .. }
            | ProviderError::ImageUnknown { .. }
            | ProviderError::ImageNotAvailable { .. }
            | ProviderError::ImageNotInRegion { .. } => true,
            // A token the API refuses is a setting to change too.
            ProviderError::Api(e) => matches!(e.status(), Some(401 | 403)),
            ProviderError::UserDataTooLarge { .. }
            | ProviderError::DuplicateHost { .. }
            | ProviderError::VpcRegionMismatch { .. }
            | ProviderError::VpcWithoutRange { .. }
            | ProviderError::CreateGaveUp { .. } => false,
        }
    }
}

/// One host the cluster wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    pub name: HostName,
    /// cloud-init user_data (see [`crate::render_user_data`]). Hosts whose
    /// user_data is byte-identical are created together, up to ten per
    /// request; per-host user_data means one request per host. `None`:
    /// adopted if its droplet exists, never created (a caller that renders
    /// a single-use secret into user_data renders it only for the hosts it
    /// saw missing; one that vanished since is created at the next call).
    pub user_data: Option<String>,
}

/// What [`reconcile`] makes true.
#[derive(Clone, Debug)]
pub struct ClusterTarget {
    /// The cluster tag, on every droplet (and the firewall).
    pub tag: TagName,
    pub hosts: Vec<HostSpec>,
    pub droplet: DropletSettings,
    pub vpc: VpcSettings,
    pub firewall: Option<FirewallSettings>,
    /// How long a droplet may stay `new` before it is reported stuck.
    pub boot_timeout: Duration,
    pub poll_interval: Duration,
}

impl ClusterTarget {
    /// A target with the config's droplet, VPC, firewall and timing settings.
    pub fn new(config: &DigitalOceanConfig, tag: TagName, hosts: Vec<HostSpec>) -> ClusterTarget {
        ClusterTarget {
            tag,
            hosts,
            droplet: config.droplet.clone(),
            vpc: config.vpc.clone(),
            firewall: config.firewall.clone(),
            boot_timeout: config.timeouts.boot,
            poll_interval: config.timeouts.poll_interval,
        }
    }

    /// The VPC's name: configured, or derived from the tag.
    pub fn vpc_name(&self) -> String {
        self.vpc
            .name
            .clone()
            .unwrap_or_else(|| self.tag.resource_name("vpc"))
    }
}

/// The firewall of a cluster is found by this name (and the cluster tag).
pub fn firewall_name(tag: &TagName) -> String {
    tag.resource_name("fw")
}

/// VPCs this crate creates carry this description; [`teardown`] deletes only
/// those, never a VPC the user made.
pub fn vpc_marker(tag: &TagName) -> String {
    format!("apiary cluster {tag} (created by apiary; deleted by its teardown)")
}

/// A droplet as the coordinator needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostState {
    pub name: String,
    pub id: u64,
    pub status: DropletStatus,
    pub public_ipv4: Option<Ipv4Addr>,
    /// The VPC address: what the coordinator and cluster traffic use.
    pub private_ipv4: Option<Ipv4Addr>,
}

impl HostState {
    fn of(d: &Droplet) -> HostState {
        HostState {
            name: d.name.clone(),
            id: d.id,
            status: d.status,
            public_ipv4: d.public_ipv4(),
            private_ipv4: d.private_ipv4(),
        }
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = |a: Option<Ipv4Addr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
        write!(
            f,
            "{} (#{}, {}, public {}, private {})",
            self.name,
            self.id,
            self.status,
            ip(self.public_ipv4),
            ip(self.private_ipv4)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcState {
    pub id: String,
    pub name: String,
    pub ip_range: Option<String>,
    pub created: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallState {
    pub id: String,
    pub name: String,
    pub created: bool,
}

/// What [`reconcile`] found and did.
#[derive(Clone, Debug)]
pub struct ReconcileReport {
    /// The tag's canonical spelling (tags are "case stable" upstream).
    pub tag: String,
    /// One entry per desired host, in the target's order.
    pub hosts: Vec<HostState>,
    /// Created by this run.
    pub created: Vec<String>,
    /// Existed already (a restarted coordinator adopts, never duplicates).
    pub adopted: Vec<String>,
    /// Created by a request whose answer was lost, found again by listing.
    pub recovered: Vec<String>,
    /// Still `new` when `boot_timeout` ran out.
    pub stuck: Vec<String>,
    /// Tagged droplets the target does not name; [`remove`] deletes them
    /// once the coordinator has drained them.
    pub surplus: Vec<HostState>,
    /// More droplets with a desired name than one; the oldest is used, the
    /// others are listed here for removal.
    pub duplicates: Vec<HostState>,
    pub vpc: VpcState,
    pub firewall: Option<FirewallState>,
    /// Things a person should know (drift this provider cannot repair).
    pub notes: Vec<String>,
}

impl ReconcileReport {
    /// Every desired host exists and is `active`.
    pub fn is_ready(&self) -> bool {
        self.stuck.is_empty() && self.hosts.iter().all(|h| h.status == DropletStatus::Active)
    }

    pub fn host(&self, name: &str) -> Option<&HostState> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cluster tag {}: {} host(s), {} created, {} adopted, {} recovered after a lost answer",
            self.tag,
            self.hosts.len(),
            self.created.len(),
            self.adopted.len(),
            self.recovered.len()
        )?;
        for h in &self.hosts {
            writeln!(f, "  {h}")?;
        }
        writeln!(
            f,
            "  VPC {} ({}){}",
            self.vpc.name,
            self.vpc.ip_range.as_deref().unwrap_or("?"),
            if self.vpc.created { ", created" } else { "" }
        )?;
        if let Some(fw) = &self.firewall {
            writeln!(
                f,
                "  firewall {}{}",
                fw.name,
                if fw.created { ", created" } else { "" }
            )?;
        }
        if !self.stuck.is_empty() {
            writeln!(f, "  stuck in `new`: {}", self.stuck.join(", "))?;
        }
        for s in &self.surplus {
            writeln!(f, "  surplus (drain, then remove): {s}")?;
        }
        for d in &self.duplicates {
            writeln!(f, "  duplicate (remove): {d}")?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

/// The decision of one reconcile pass, made without I/O.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Desired host name → the droplet that is it.
    pub adopt: BTreeMap<String, u64>,
    /// Batches of names to create: same user_data, at most ten each.
    pub create: Vec<CreateBatch>,
    pub surplus: Vec<u64>,
    pub duplicates: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateBatch {
    pub names: Vec<String>,
    pub user_data: String,
}

/// Decides what to adopt and what to create. Names match exactly; among
/// several droplets with one name, the oldest (lowest id) is the host.
pub fn plan(desired: &[HostSpec], observed: &[Droplet]) -> Plan {
    let mut by_name: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for d in observed {
        by_name.entry(d.name.as_str()).or_default().push(d.id);
    }
    let wanted: HashSet<&str> = desired.iter().map(|h| h.name.as_str()).collect();
    let mut out = Plan::default();
    for (name, ids) in &mut by_name {
        ids.sort_unstable();
        if wanted.contains(name) {
            out.adopt.insert((*name).to_owned(), ids[0]);
            out.duplicates.extend(&ids[1..]);
        } else {
            out.surplus.extend(ids.iter());
        }
    }
    // Group by user_data, keeping the target's order within and across groups.
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    for h in desired {
        if out.adopt.contains_key(h.name.as_str()) {
            continue;
        }
        let Some(user_data) = h.user_data.as_deref() else {
            continue;
        };
        match groups.iter_mut().find(|(ud, _)| *ud == user_data) {
            Some((_, names)) => names.push(h.name.as_str().to_owned()),
            None => groups.push((user_data, vec![h.name.as_str().to_owned()])),
        }
    }
    for (user_data, names) in groups {
        for chunk in names.chunks(MAX_NAMES_PER_CREATE) {
            out.create.push(CreateBatch {
                names: chunk.to_vec(),
                user_data: user_data.to_owned(),
            });
        }
    }
    out
}

/// Makes the tagged droplets match `target`: lists by tag (all pages),
/// ensures the tag, the VPC and the optional firewall, creates the missing
/// hosts (never a second droplet for a name, even when a create's answer is
/// lost), waits for `active` until `boot_timeout`, and reports every host's
/// addresses. Surplus droplets are only reported: see [`remove`].
pub async fn reconcile(
    client: &Client,
    target: &ClusterTarget,
) -> Result<ReconcileReport, ProviderError> {
    let span = info_span!("reconcile", tag = %target.tag, hosts = target.hosts.len());
    reconcile_inner(client, target).instrument(span).await
}

async fn reconcile_inner(
    client: &Client,
    target: &ClusterTarget,
) -> Result<ReconcileReport, ProviderError> {
    let mut names = HashSet::new();
    for h in &target.hosts {
        if !names.insert(h.name.as_str().to_ascii_lowercase()) {
            return Err(ProviderError::DuplicateHost {
                host: h.name.to_string(),
            });
        }
        let bytes = h.user_data.as_ref().map_or(0, String::len);
        if bytes > MAX_USER_DATA_BYTES {
            return Err(ProviderError::UserDataTooLarge {
                host: h.name.to_string(),
                bytes,
            });
        }
    }

    let mut notes = Vec::new();
    let observed = client.list_droplets_by_tag(target.tag.as_str()).await?;

    // The tag must exist before a firewall can name it; droplets carrying it
    // prove it does (and show its canonical spelling).
    let tag = match observed
        .iter()
        .flat_map(|d| d.tags.iter())
        .find(|t| target.tag.eq_ignore_case(t))
    {
        Some(canonical) => canonical.clone(),
        None => client.create_tag(target.tag.as_str()).await?.name,
    };

    let (vpc, vpc_created) = find_or_create_vpc(client, target).await?;
    let vpc_state = VpcState {
        id: vpc.id.clone(),
        name: vpc.name.clone(),
        ip_range: vpc.ip_range.clone(),
        created: vpc_created,
    };
    let firewall = match &target.firewall {
        Some(fw) => Some(ensure_firewall(client, target, &tag, fw, &vpc, &mut notes).await?),
        None => None,
    };

    let plan = plan(&target.hosts, &observed);
    let by_id: HashMap<u64, &Droplet> = observed.iter().map(|d| (d.id, d)).collect();
    let mut current: BTreeMap<String, Droplet> = BTreeMap::new();
    let mut adopted = Vec::new();
    for (name, id) in &plan.adopt {
        if let Some(d) = by_id.get(id) {
            current.insert(name.clone(), (*d).clone());
            adopted.push(name.clone());
            if d.vpc_uuid.as_deref().is_some_and(|v| v != vpc.id) {
                notes.push(format!(
                    "droplet {name} (#{id}) is in VPC {}, not {}: its private address is off the \
                     cluster network; remove it and reconcile to recreate it",
                    d.vpc_uuid.as_deref().unwrap_or("?"),
                    vpc.name
                ));
            }
        }
    }
    if !adopted.is_empty() {
        info!(count = adopted.len(), "adopted existing droplets");
    }

    let mut created = Vec::new();
    let mut recovered = Vec::new();
    for batch in &plan.create {
        let outcome = create_batch(client, target, &tag, &vpc, batch).await?;
        for d in outcome.created {
            created.push(d.name.clone());
            current.insert(d.name.clone(), d);
        }
        for d in outcome.recovered {
            recovered.push(d.name.clone());
            current.insert(d.name.clone(), d);
        }
    }

    ensure_extra_tags(client, target, &current).await?;

    let stuck = wait_active(client, target, &mut current, &mut notes).await?;

    let hosts = target
        .hosts
        .iter()
        .filter_map(|h| current.get(h.name.as_str()).map(HostState::of))
        .collect();
    let of_ids = |ids: &[u64]| -> Vec<HostState> {
        ids.iter()
            .filter_map(|id| by_id.get(id).map(|d| HostState::of(d)))
            .collect()
    };
    let report = ReconcileReport {
        tag,
        hosts,
        created,
        adopted,
        recovered,
        stuck,
        surplus: of_ids(&plan.surplus),
        duplicates: of_ids(&plan.duplicates),
        vpc: vpc_state,
        firewall,
        notes,
    };
    info!(
        created = report.created.len(),
        adopted = report.adopted.len(),
        recovered = report.recovered.len(),
        stuck = report.stuck.len(),
        surplus = report.surplus.len(),
        "reconcile done"
    );
    Ok(report)
}

struct BatchOutcome {
    created: Vec<Droplet>,
    recovered: Vec<Droplet>,
}

/// Creates one batch. When a create's outcome is unknown (5xx, timeout,
/// dropped connection), the droplets may exist: the tag is listed again and
/// names found there are adopted before anything is sent again.
async fn create_batch(
    client: &Client,
    target: &ClusterTarget,
    tag: &str,
    vpc: &Vpc,
    batch: &CreateBatch,
) -> Result<BatchOutcome, ProviderError> {
    let mut remaining: Vec<String> = batch.names.clone();
    let mut out = BatchOutcome {
        created: Vec::new(),
        recovered: Vec::new(),
    };
    let max = client.policy().max_attempts.max(1);
    let mut unknown = 0u32;
    loop {
        let req = create_request(target, tag, vpc, &remaining, &batch.user_data);
        match client.create_droplets(&req).await {
            Ok(droplets) => {
                info!(names = ?remaining, "created droplets");
                out.created.extend(droplets);
                return Ok(out);
            }
            Err(e) if e.outcome_unknown() => {
                unknown += 1;
                warn!(names = ?remaining, error = %e, "create outcome unknown; listing before retrying");
                if unknown >= max {
                    return Err(ProviderError::CreateGaveUp {
                        what: format!("droplets {}", remaining.join(", ")),
                        attempts: unknown,
                        last: e.to_string(),
                    });
                }
                client.sleep(client.policy().backoff(unknown)).await;
                let listed = client.list_droplets_by_tag(tag).await?;
                let mut found: BTreeMap<&str, &Droplet> = BTreeMap::new();
                for d in &listed {
                    // Oldest wins, as in `plan`.
                    let slot = found.entry(d.name.as_str()).or_insert(d);
                    if d.id < slot.id {
                        *slot = d;
                    }
                }
                remaining.retain(|name| match found.get(name.as_str()) {
                    Some(d) => {
                        out.recovered.push((*d).clone());
                        false
                    }
                    None => true,
                });
                if remaining.is_empty() {
                    return Ok(out);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn create_request(
    target: &ClusterTarget,
    tag: &str,
    vpc: &Vpc,
    names: &[String],
    user_data: &str,
) -> DropletCreate {
    let s = &target.droplet;
    let mut tags = vec![tag.to_owned()];
    tags.extend(s.extra_tags.iter().map(|t| t.as_str().to_owned()));
    let (name, names) = if names.len() == 1 {
        (Some(names[0].clone()), None)
    } else {
        (None, Some(names.to_vec()))
    };
    DropletCreate {
        name,
        names,
        region: s.region.clone(),
        size: s.size.clone(),
        image: match &s.image {
            ImageRef::Slug(slug) => ImageValue::Slug(slug.clone()),
            ImageRef::Id(id) => ImageValue::Id(*id),
        },
        ssh_keys: s
            .ssh_keys
            .iter()
            .map(|k| match k {
                SshKeyRef::Id(id) => SshKeyValue::Id(*id),
                SshKeyRef::Fingerprint(fp) => SshKeyValue::Fingerprint(fp.clone()),
            })
            .collect(),
        tags,
        user_data: (!user_data.is_empty()).then(|| user_data.to_owned()),
        vpc_uuid: Some(vpc.id.clone()),
    }
}

/// Adds configured extra tags that adopted droplets lack (the tag list may
/// have grown since they were created).
async fn ensure_extra_tags(
    client: &Client,
    target: &ClusterTarget,
    current: &BTreeMap<String, Droplet>,
) -> Result<(), ProviderError> {
    for extra in &target.droplet.extra_tags {
        let missing: Vec<u64> = current
            .values()
            .filter(|d| !d.has_tag(extra.as_str()))
            .map(|d| d.id)
            .collect();
        if missing.is_empty() {
            continue;
        }
        let canonical = client.create_tag(extra.as_str()).await?.name;
        client.tag_droplets(&canonical, &missing).await?;
    }
    Ok(())
}

/// Polls the tag's listing until every desired droplet is `active` or the
/// deadline passes; returns the names still `new`.
async fn wait_active(
    client: &Client,
    target: &ClusterTarget,
    current: &mut BTreeMap<String, Droplet>,
    notes: &mut Vec<String>,
) -> Result<Vec<String>, ProviderError> {
    let pending = |current: &BTreeMap<String, Droplet>| -> Vec<String> {
        current
            .iter()
            .filter(|(_, d)| d.status == DropletStatus::New)
            .map(|(n, _)| n.clone())
            .collect()
    };
    let clock = client.clock().clone();
    let deadline = clock.now() + target.boot_timeout;
    loop {
        let waiting = pending(current);
        if waiting.is_empty() {
            break;
        }
        if clock.now() >= deadline {
            warn!(stuck = ?waiting, timeout = ?target.boot_timeout, "droplets still new at the deadline");
            return Ok(waiting);
        }
        client.sleep(target.poll_interval).await;
        let listed = client.list_droplets_by_tag(target.tag.as_str()).await?;
        let by_id: HashMap<u64, &Droplet> = listed.iter().map(|d| (d.id, d)).collect();
        let mut vanished = Vec::new();
        for (name, d) in current.iter_mut() {
            match by_id.get(&d.id) {
                Some(fresh) => *d = (*fresh).clone(),
                None => vanished.push(name.clone()),
            }
        }
        for name in vanished {
            if let Some(d) = current.remove(&name) {
                notes.push(format!(
                    "droplet {name} (#{}) disappeared while booting; the next reconcile creates it again",
                    d.id
                ));
            }
        }
    }
    for (name, d) in current.iter() {
        if d.status != DropletStatus::Active {
            notes.push(format!(
                "droplet {name} (#{}) is {}; power it on in the control panel or remove it",
                d.id, d.status
            ));
        }
    }
    Ok(Vec::new())
}

/// Finds the cluster's VPC, or creates it, as [`reconcile`] does first; for
/// callers that need its range before they render user_data (agents choose
/// their private address by it: a droplet's eth0 has a 10.x anchor address
/// too). The range is required: the API always reports one.
pub async fn ensure_vpc(
    client: &Client,
    target: &ClusterTarget,
) -> Result<VpcState, ProviderError> {
    let (vpc, created) = find_or_create_vpc(client, target).await?;
    if vpc.ip_range.is_none() {
        return Err(ProviderError::VpcWithoutRange { name: vpc.name });
    }
    Ok(VpcState {
        id: vpc.id,
        name: vpc.name,
        ip_range: vpc.ip_range,
        created,
    })
}

async fn find_or_create_vpc(
    client: &Client,
    target: &ClusterTarget,
) -> Result<(Vpc, bool), ProviderError> {
    let name = target.vpc_name();
    let region = &target.droplet.region;
    let find = |vpcs: Vec<Vpc>| vpcs.into_iter().find(|v| v.name == name);
    let check = |v: Vpc| -> Result<Vpc, ProviderError> {
        match &v.region {
            Some(r) if r != region => Err(ProviderError::VpcRegionMismatch {
                name: v.name.clone(),
                found: r.clone(),
                wanted: region.clone(),
            }),
            _ => Ok(v),
        }
    };
    if let Some(v) = find(client.list_vpcs().await?) {
        return Ok((check(v)?, false));
    }
    let description = vpc_marker(&target.tag);
    let range = target.vpc.ip_range.map(|r| r.to_string());
    let max = client.policy().max_attempts.max(1);
    let mut unknown = 0;
    loop {
        match client
            .create_vpc(&name, region, &description, range.as_deref())
            .await
        {
            Ok(v) => {
                info!(vpc = %v.name, id = %v.id, "created VPC");
                return Ok((v, true));
            }
            Err(e) if e.outcome_unknown() => {
                unknown += 1;
                if unknown >= max {
                    return Err(ProviderError::CreateGaveUp {
                        what: format!("VPC {name}"),
                        attempts: unknown,
                        last: e.to_string(),
                    });
                }
                client.sleep(client.policy().backoff(unknown)).await;
                if let Some(v) = find(client.list_vpcs().await?) {
                    return Ok((check(v)?, true));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The firewall rules that mirror the host policy.
pub fn firewall_rules(
    fw: &FirewallSettings,
    vpc_range: &str,
) -> (Vec<InboundRule>, Vec<OutboundRule>) {
    let anywhere = || FirewallRuleTarget {
        addresses: vec!["0.0.0.0/0".into(), "::/0".into()],
        droplet_ids: Vec::new(),
        tags: None,
    };
    let vpc = || FirewallRuleTarget {
        addresses: vec![vpc_range.to_owned()],
        droplet_ids: Vec::new(),
        tags: None,
    };
    let mut inbound: Vec<InboundRule> = fw
        .public_tcp_ports
        .iter()
        .map(|p| InboundRule {
            protocol: "tcp".into(),
            ports: p.to_string(),
            sources: anywhere(),
        })
        .collect();
    // SSH (and the coordinator's gRPC on its droplet) only from the
    // operator's networks, and not at all without them: never from the
    // world (config refuses 22 among the public ports).
    if !fw.admin_cidrs.is_empty() {
        for port in std::iter::once(SSH_PORT).chain(fw.admin_tcp_ports.iter().copied()) {
            inbound.push(InboundRule {
                protocol: "tcp".into(),
                ports: port.to_string(),
                sources: FirewallRuleTarget {
                    addresses: fw.admin_cidrs.clone(),
                    droplet_ids: Vec::new(),
                    tags: None,
                },
            });
        }
    }
    for port in &fw.vpc_tcp_ports {
        inbound.push(InboundRule {
            protocol: "tcp".into(),
            ports: port.to_string(),
            sources: vpc(),
        });
    }
    // Swarm: 2377/tcp managers, 7946/tcp+udp gossip, 4789/udp VXLAN data
    // path; never from outside the VPC.
    for (proto, port) in [
        ("tcp", "2377"),
        ("tcp", "7946"),
        ("udp", "7946"),
        ("udp", "4789"),
    ] {
        inbound.push(InboundRule {
            protocol: proto.into(),
            ports: port.into(),
            sources: vpc(),
        });
    }
    // ICMP (ping, path-MTU discovery on the overlay's underlay) from the
    // VPC only. The API takes no port for ICMP; "0" is what it returns.
    inbound.push(InboundRule {
        protocol: "icmp".into(),
        ports: "0".into(),
        sources: vpc(),
    });
    // No ESP (IP protocol 50) rule: the API's rule protocols are tcp, udp
    // and icmp only, so a Cloud Firewall drops the encrypted overlay's data
    // path. The coordinator refuses `firewall = true` with
    // `swarm.encrypted = true` for that reason.
    // A Cloud Firewall without outbound rules blocks all outbound traffic:
    // hosts must reach the coordinator, the package mirror and each other.
    // "0" is the spec's "all ports" (ignored for ICMP).
    let outbound = ["tcp", "udp", "icmp"]
        .into_iter()
        .map(|proto| OutboundRule {
            protocol: proto.into(),
            ports: "0".into(),
            destinations: anywhere(),
        })
        .collect();
    (inbound, outbound)
}

fn rule_key_in(r: &InboundRule) -> (String, String, BTreeSet<String>) {
    (
        r.protocol.clone(),
        r.ports.clone(),
        r.sources.addresses.iter().cloned().collect(),
    )
}

async fn ensure_firewall(
    client: &Client,
    target: &ClusterTarget,
    tag: &str,
    fw: &FirewallSettings,
    vpc: &Vpc,
    notes: &mut Vec<String>,
) -> Result<FirewallState, ProviderError> {
    let name = firewall_name(&target.tag);
    let range = vpc
        .ip_range
        .clone()
        .ok_or_else(|| ProviderError::VpcWithoutRange {
            name: vpc.name.clone(),
        })?;
    let (inbound, outbound) = firewall_rules(fw, &range);
    let ours = |f: &Firewall| f.name == name;
    let existing = client.list_firewalls().await?.into_iter().find(ours);
    if let Some(f) = existing {
        let has_tag = f
            .tags
            .as_ref()
            .is_some_and(|ts| ts.iter().any(|t| t.eq_ignore_ascii_case(tag)));
        if !has_tag {
            client.add_firewall_tags(&f.id, &[tag.to_owned()]).await?;
        }
        let want: BTreeSet<_> = inbound.iter().map(rule_key_in).collect();
        let have: BTreeSet<_> = f.inbound_rules.iter().flatten().map(rule_key_in).collect();
        if want != have {
            notes.push(format!(
                "firewall {name} has inbound rules that differ from the policy (updating rules is \
                 not supported by this provider); delete it in the control panel and reconcile \
                 to recreate it"
            ));
        }
        return Ok(FirewallState {
            id: f.id,
            name,
            created: false,
        });
    }
    let req = FirewallCreate {
        name: name.clone(),
        inbound_rules: inbound,
        outbound_rules: outbound,
        tags: vec![tag.to_owned()],
    };
    let max = client.policy().max_attempts.max(1);
    let mut unknown = 0;
    loop {
        match client.create_firewall(&req).await {
            Ok(f) => {
                info!(firewall = %f.name, id = %f.id, "created firewall");
                return Ok(FirewallState {
                    id: f.id,
                    name,
                    created: true,
                });
            }
            Err(e) if e.outcome_unknown() => {
                unknown += 1;
                if unknown >= max {
                    return Err(ProviderError::CreateGaveUp {
                        what: format!("firewall {name}"),
                        attempts: unknown,
                        last: e.to_string(),
                    });
                }
                client.sleep(client.policy().backoff(unknown)).await;
                if let Some(f) = client.list_firewalls().await?.into_iter().find(ours) {
                    return Ok(FirewallState {
                        id: f.id,
                        name,
                        created: true,
                    });
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What [`remove`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveReport {
    pub deleted: Vec<HostState>,
    /// Names asked for that had no droplet with the cluster tag.
    pub not_found: Vec<String>,
}

impl fmt::Display for RemoveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.deleted.is_empty() {
            write!(f, "deleted no droplet")?;
        } else {
            let names: Vec<String> = self
                .deleted
                .iter()
                .map(|h| format!("{} (#{})", h.name, h.id))
                .collect();
            write!(f, "deleted {}", names.join(", "))?;
        }
        if !self.not_found.is_empty() {
            write!(f, "; not found: {}", self.not_found.join(", "))?;
        }
        Ok(())
    }
}

/// Deletes the droplets with these names that carry the cluster tag (all of
/// them, duplicates included). The coordinator drains the hosts (Swarm,
/// database) before calling this; nothing here checks.
pub async fn remove(
    client: &Client,
    tag: &TagName,
    names: &[HostName],
) -> Result<RemoveReport, ProviderError> {
    let span = info_span!("remove", tag = %tag, hosts = names.len());
    async {
        let listed = client.list_droplets_by_tag(tag.as_str()).await?;
        let mut report = RemoveReport::default();
        for name in names {
            let matching: Vec<&Droplet> =
                listed.iter().filter(|d| d.name == name.as_str()).collect();
            if matching.is_empty() {
                report.not_found.push(name.to_string());
            }
            for d in matching {
                // `false` (404) means it went between the listing and now,
                // e.g. a retried delete whose first answer was lost: gone
                // either way.
                let _existed = client.delete_droplet(d.id).await?;
                info!(droplet = %d.name, id = d.id, "deleted droplet");
                report.deleted.push(HostState::of(d));
            }
        }
        Ok(report)
    }
    .instrument(span)
    .await
}

/// Timing of [`teardown_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TeardownOptions {
    /// How long to wait for droplets to disappear and the VPC to empty.
    pub deadline: Duration,
    pub poll_interval: Duration,
}

impl Default for TeardownOptions {
    fn default() -> Self {
        TeardownOptions {
            deadline: Duration::from_secs(300),
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// What [`teardown`] deleted and what it left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeardownReport {
    pub tag: String,
    pub droplets: Vec<HostState>,
    pub firewalls: Vec<FirewallState>,
    pub vpcs: Vec<VpcState>,
    /// Resources left behind, each with the reason.
    pub kept: Vec<String>,
}

impl TeardownReport {
    /// Nothing the cluster created is left.
    pub fn is_complete(&self) -> bool {
        self.kept.is_empty()
    }
}

impl fmt::Display for TeardownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "teardown of cluster tag {}:", self.tag)?;
        if self.droplets.is_empty() {
            writeln!(f, "  no droplet had the tag")?;
        }
        for d in &self.droplets {
            writeln!(f, "  deleted droplet {} (#{})", d.name, d.id)?;
        }
        for fw in &self.firewalls {
            writeln!(f, "  deleted firewall {} ({})", fw.name, fw.id)?;
        }
        for v in &self.vpcs {
            writeln!(
                f,
                "  deleted VPC {} ({}, {})",
                v.name,
                v.id,
                v.ip_range.as_deref().unwrap_or("?")
            )?;
        }
        for k in &self.kept {
            writeln!(f, "  kept: {k}")?;
        }
        write!(
            f,
            "  the tag itself stays (it costs nothing and may label things apiary did not create)"
        )
    }
}

/// [`teardown_with`] with default timing.
pub async fn teardown(client: &Client, tag: &TagName) -> Result<TeardownReport, ProviderError> {
    teardown_with(client, tag, TeardownOptions::default()).await
}

/// Deletes every droplet with the cluster tag, then the cluster's firewall
/// and the VPC this crate created for it (recognised by [`vpc_marker`]; a
/// VPC the user named and made is never deleted), and reports it all.
pub async fn teardown_with(
    client: &Client,
    tag: &TagName,
    options: TeardownOptions,
) -> Result<TeardownReport, ProviderError> {
    let span = info_span!("teardown", tag = %tag);
    teardown_inner(client, tag, options).instrument(span).await
}

async fn teardown_inner(
    client: &Client,
    tag: &TagName,
    options: TeardownOptions,
) -> Result<TeardownReport, ProviderError> {
    let clock = client.clock().clone();
    let deadline = clock.now() + options.deadline;
    let mut report = TeardownReport {
        tag: tag.to_string(),
        ..TeardownReport::default()
    };
    let mut seen = HashSet::new();
    // Delete by tag, then list until the tag is empty: the listing names what
    // went, and catches droplets created meanwhile.
    let mut listed = client.list_droplets_by_tag(tag.as_str()).await?;
    while !listed.is_empty() {
        for d in &listed {
            if seen.insert(d.id) {
                report.droplets.push(HostState::of(d));
            }
        }
        if clock.now() >= deadline {
            let names: Vec<String> = listed.iter().map(|d| d.name.clone()).collect();
            report.kept.push(format!(
                "droplets {} still listed after {:?}",
                names.join(", "),
                options.deadline
            ));
            break;
        }
        client.delete_droplets_by_tag(tag.as_str()).await?;
        info!(count = listed.len(), "deleted droplets by tag");
        listed = client.list_droplets_by_tag(tag.as_str()).await?;
        if !listed.is_empty() {
            client.sleep(options.poll_interval).await;
        }
    }

    let fw_name = firewall_name(tag);
    for f in client.list_firewalls().await? {
        let tagged = f
            .tags
            .as_ref()
            .is_some_and(|ts| ts.iter().any(|t| tag.eq_ignore_case(t)));
        if f.name == fw_name && tagged {
            client.delete_firewall(&f.id).await?;
            info!(firewall = %f.name, "deleted firewall");
            report.firewalls.push(FirewallState {
                id: f.id,
                name: f.name,
                created: true,
            });
        }
    }

    let marker = vpc_marker(tag);
    for v in client.list_vpcs().await? {
        if v.description.as_deref() != Some(marker.as_str()) || v.default {
            continue;
        }
        // The API refuses (403) while members remain; destroyed droplets can
        // take a moment to leave the VPC.
        loop {
            match client.delete_vpc(&v.id).await {
                Ok(_) => {
                    info!(vpc = %v.name, "deleted VPC");
                    report.vpcs.push(VpcState {
                        id: v.id.clone(),
                        name: v.name.clone(),
                        ip_range: v.ip_range.clone(),
                        created: true,
                    });
                    break;
                }
                Err(e) if e.status() == Some(403) || e.status() == Some(409) => {
                    if clock.now() >= deadline {
                        report.kept.push(format!("VPC {} ({}): {e}", v.name, v.id));
                        break;
                    }
                    client.sleep(options.poll_interval).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    info!(
        droplets = report.droplets.len(),
        firewalls = report.firewalls.len(),
        vpcs = report.vpcs.len(),
        "teardown done"
    );
    Ok(report)
}

/// What [`preflight`] checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreflightReport {
    /// The account's droplet limit (`None`: the API did not say).
    pub droplet_limit: Option<u64>,
    /// Droplets in the account (every tag), before anything is created.
    pub droplets_in_account: usize,
    /// Droplets the target still needs: its hosts without a droplet that
    /// carries the cluster tag under their name.
    pub droplets_to_create: usize,
    /// The image as the API knows it.
    pub image_id: u64,
}

/// What [`preflight`] checks the account against: the droplet settings
/// and the hosts the cluster wants under its tag.
#[derive(Clone, Copy, Debug)]
pub struct PreflightTarget<'a> {
    pub droplet: &'a DropletSettings,
    pub tag: &'a TagName,
    pub hosts: &'a [HostName],
}

/// The droplets the account must still make room for: the wanted hosts
/// that no droplet with the cluster tag already is (those need no new
/// slot). Pure, so the arithmetic is unit-tested.
pub fn droplets_to_create(tag: &TagName, hosts: &[HostName], observed: &[Droplet]) -> usize {
    let ours: HashSet<&str> = observed
        .iter()
        .filter(|d| d.tags.iter().any(|t| tag.eq_ignore_case(t)))
        .map(|d| d.name.as_str())
        .collect();
    hosts
        .iter()
        .map(HostName::as_str)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|h| !ours.contains(h))
        .count()
}

/// Checks, before anything is created, that the account is active, the
/// droplets still to make fit under its droplet limit, the region and size
/// exist and match, the image exists there, and the SSH keys are known:
/// mistakes that otherwise surface one create at a time, after a tag, a VPC
/// and a firewall were made. It only reads (no tag, VPC, firewall or
/// droplet is created), so a refusal leaves the account as it was.
pub async fn preflight(
    client: &Client,
    target: &PreflightTarget<'_>,
) -> Result<PreflightReport, ProviderError> {
    let span = info_span!("preflight", tag = %target.tag, hosts = target.hosts.len());
    preflight_inner(client, target).instrument(span).await
}

async fn preflight_inner(
    client: &Client,
    target: &PreflightTarget<'_>,
) -> Result<PreflightReport, ProviderError> {
    let settings = target.droplet;
    let account = client.account().await?;
    if let Some(status) = &account.status
        && status != "active"
    {
        return Err(ProviderError::AccountNotActive {
            status: status.clone(),
            message: account.status_message.clone().unwrap_or_default(),
        });
    }

    let all = client.list_droplets().await?;
    let needed = droplets_to_create(target.tag, target.hosts, &all);
    // Nothing to create needs no slot, even in an account over its limit.
    if let Some(limit) = account.droplet_limit
        && needed > 0
        && all.len() as u64 + needed as u64 > limit
    {
        return Err(ProviderError::DropletLimit {
            needed,
            existing: all.len(),
            limit,
        });
    }

    let regions = client.list_regions().await?;
    let region = regions
        .iter()
        .find(|r| r.slug == settings.region && r.available)
        .ok_or_else(|| ProviderError::RegionUnavailable {
            region: settings.region.clone(),
            available: regions
                .iter()
                .filter(|r| r.available)
                .map(|r| r.slug.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let sizes = client.list_sizes().await?;
    let size_ok = sizes
        .iter()
        .any(|s| s.slug == settings.size && s.available && s.regions.contains(&settings.region))
        && region.sizes.contains(&settings.size);
    if !size_ok {
        return Err(ProviderError::SizeUnavailable {
            size: settings.size.clone(),
            region: settings.region.clone(),
            available: region.sizes.join(", "),
        });
    }

    let image_name = match &settings.image {
        ImageRef::Slug(slug) => slug.clone(),
        ImageRef::Id(id) => id.to_string(),
    };
    let image =
        client
            .get_image(&settings.image)
            .await?
            .ok_or_else(|| ProviderError::ImageUnknown {
                image: image_name.clone(),
            })?;
    if image.status.as_deref().is_some_and(|s| s != "available") {
        return Err(ProviderError::ImageNotAvailable {
            image: image_name,
            status: image.status.clone().unwrap_or_default(),
        });
    }
    if !image.regions.is_empty() && !image.regions.contains(&settings.region) {
        return Err(ProviderError::ImageNotInRegion {
            image: image_name,
            region: settings.region.clone(),
            regions: image.regions.join(", "),
        });
    }

    if !settings.ssh_keys.is_empty() {
        let keys = client.list_ssh_keys().await?;
        for k in &settings.ssh_keys {
            let known = match k {
                SshKeyRef::Id(id) => keys.iter().any(|x| x.id == Some(*id)),
                SshKeyRef::Fingerprint(fp) => keys.iter().any(|x| {
                    x.fingerprint
                        .as_deref()
                        .is_some_and(|f| f.eq_ignore_ascii_case(fp))
                }),
            };
            if !known {
                return Err(ProviderError::SshKeyUnknown {
                    key: match k {
                        SshKeyRef::Id(id) => id.to_string(),
                        SshKeyRef::Fingerprint(fp) => fp.clone(),
                    },
                });
            }
        }
    }
    info!(
        droplets_in_account = all.len(),
        droplets_to_create = needed,
        droplet_limit = ?account.droplet_limit,
        image = image.id,
        "preflight passed"
    );
    Ok(PreflightReport {
        droplet_limit: account.droplet_limit,
        droplets_in_account: all.len(),
        droplets_to_create: needed,
        image_id: image.id,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::Networks;

    fn host(name: &str, ud: &str) -> HostSpec {
        HostSpec {
            name: HostName::parse(name).unwrap(),
            user_data: Some(ud.into()),
        }
    }

    fn droplet(id: u64, name: &str) -> Droplet {
        Droplet {
            id,
            name: name.into(),
            status: DropletStatus::Active,
            tags: vec!["c".into()],
            networks: Networks::default(),
            vpc_uuid: None,
            created_at: None,
            region: None,
        }
    }

    #[test]
    fn plan_adopts_oldest_and_batches_by_user_data() {
        let desired: Vec<HostSpec> = (1..=13)
            .map(|i| host(&format!("n{i}"), if i == 13 { "other" } else { "same" }))
            .collect();
        let observed = vec![droplet(7, "n1"), droplet(3, "n1"), droplet(9, "old")];
        let p = plan(&desired, &observed);
        assert_eq!(p.adopt.get("n1"), Some(&3));
        assert_eq!(p.duplicates, vec![7]);
        assert_eq!(p.surplus, vec![9]);
        let sizes: Vec<usize> = p.create.iter().map(|b| b.names.len()).collect();
        assert_eq!(sizes, vec![10, 1, 1]);
        assert_eq!(p.create[0].names[0], "n2");
        assert_eq!(p.create[2].names, vec!["n13"]);
        assert!(
            p.create
                .iter()
                .all(|b| b.names.len() <= MAX_NAMES_PER_CREATE)
        );
    }

    #[test]
    fn droplets_to_create_counts_only_names_without_a_tagged_droplet() {
        let tag = TagName::parse("apiary-c").unwrap();
        let mut tagged = droplet(1, "n1");
        tagged.tags = vec!["Apiary-C".into()];
        // Same name, not the cluster's: it does not count as the host.
        let mut foreign = droplet(2, "n2");
        foreign.tags = vec!["web".into()];
        let hosts: Vec<HostName> = ["n1", "n2", "n3", "n3"]
            .iter()
            .map(|n| HostName::parse(n).unwrap())
            .collect();
        assert_eq!(droplets_to_create(&tag, &hosts, &[tagged, foreign]), 2);
        assert_eq!(droplets_to_create(&tag, &[], &[]), 0);
    }

    #[test]
    fn plan_is_empty_when_everything_exists() {
        let desired = vec![host("a", "x"), host("b", "x")];
        let observed = vec![droplet(1, "a"), droplet(2, "b")];
        let p = plan(&desired, &observed);
        assert!(p.create.is_empty() && p.surplus.is_empty() && p.duplicates.is_empty());
    }

    /// Every inbound rule as (protocol, port, sources).
    fn rules(fw: &FirewallSettings) -> Vec<(String, String, Vec<String>)> {
        firewall_rules(fw, "10.20.0.0/20")
            .0
            .into_iter()
            .map(|r| (r.protocol, r.ports, r.sources.addresses))
            .collect()
    }

    #[test]
    fn firewall_rules_keep_cluster_ports_inside_the_vpc() {
        let fw = FirewallSettings {
            public_tcp_ports: vec![7443],
            admin_cidrs: vec!["203.0.113.7/32".into()],
            ..FirewallSettings::default()
        };
        let (inbound, outbound) = firewall_rules(&fw, "10.20.0.0/20");
        for r in &inbound {
            let public = r.sources.addresses.contains(&"0.0.0.0/0".to_owned());
            let port: u16 = r.ports.parse().unwrap();
            assert_eq!(public, r.protocol == "tcp" && port == 7443, "{r:?}");
            if !public && port != 22 {
                assert_eq!(r.sources.addresses, ["10.20.0.0/20"], "{r:?}");
            }
        }
        let icmp: Vec<_> = inbound.iter().filter(|r| r.protocol == "icmp").collect();
        assert_eq!(icmp.len(), 1, "ICMP from the VPC: {inbound:?}");
        assert_eq!(icmp[0].sources.addresses, ["10.20.0.0/20"]);
        // The API knows tcp, udp and icmp only: nothing else may be asked for.
        assert!(
            inbound
                .iter()
                .all(|r| ["tcp", "udp", "icmp"].contains(&r.protocol.as_str()))
        );
        assert_eq!(inbound.len(), 7);
        assert_eq!(outbound.len(), 3);
    }

    #[test]
    fn ssh_is_open_only_to_the_admin_cidrs() {
        let ssh = |fw: &FirewallSettings| -> Vec<Vec<String>> {
            rules(fw)
                .into_iter()
                .filter(|(proto, port, _)| proto == "tcp" && port == "22")
                .map(|(_, _, sources)| sources)
                .collect()
        };
        let fw = FirewallSettings {
            public_tcp_ports: vec![443],
            admin_cidrs: vec!["203.0.113.7/32".into(), "2001:db8::/48".into()],
            ..FirewallSettings::default()
        };
        assert_eq!(
            ssh(&fw),
            [vec![
                "203.0.113.7/32".to_owned(),
                "2001:db8::/48".to_owned()
            ]],
            "one SSH rule, from the admin networks only"
        );
        // No admin networks (the default): no SSH rule at all.
        let closed = FirewallSettings {
            public_tcp_ports: vec![443],
            admin_cidrs: Vec::new(),
            ..FirewallSettings::default()
        };
        assert!(ssh(&closed).is_empty(), "{:?}", rules(&closed));
        // Nothing anywhere reaches 22 from the world, whatever the settings.
        for fw in [&fw, &closed] {
            for (proto, port, sources) in rules(fw) {
                if proto == "tcp" && port == "22" {
                    assert!(
                        !sources.iter().any(|s| s == "0.0.0.0/0" || s == "::/0"),
                        "{sources:?}"
                    );
                }
            }
        }
        assert_eq!(rules(&closed).len(), 6, "443 + 4 Swarm rules + ICMP");
    }
}
