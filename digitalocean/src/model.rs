//! The API objects this crate reads and writes, limited to the fields it uses.
//!
//! Decoding is lenient (unknown fields ignored, most fields defaulted) so an
//! API that grows new fields keeps working; what is sent is checked against
//! the OpenAPI spec in the tests (see `fake`).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DropletStatus {
    New,
    Active,
    Off,
    Archive,
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for DropletStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DropletStatus::New => "new",
            DropletStatus::Active => "active",
            DropletStatus::Off => "off",
            DropletStatus::Archive => "archive",
            DropletStatus::Unknown => "unknown",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Droplet {
    pub id: u64,
    pub name: String,
    pub status: DropletStatus,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub networks: Networks,
    #[serde(default)]
    pub vpc_uuid: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub region: Option<RegionRef>,
}

impl Droplet {
    /// The address on the public interface (`networks.v4[type=public]`).
    pub fn public_ipv4(&self) -> Option<Ipv4Addr> {
        self.networks.v4_of("public")
    }

    /// The address inside the VPC (`networks.v4[type=private]`): the one the
    /// coordinator and cluster traffic use.
    pub fn private_ipv4(&self) -> Option<Ipv4Addr> {
        self.networks.v4_of("private")
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Networks {
    #[serde(default)]
    pub v4: Vec<NetworkV4>,
}

impl Networks {
    fn v4_of(&self, kind: &str) -> Option<Ipv4Addr> {
        self.v4
            .iter()
            .find(|n| n.kind.as_deref() == Some(kind))
            .and_then(|n| n.ip_address)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct NetworkV4 {
    #[serde(default)]
    pub ip_address: Option<Ipv4Addr>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RegionRef {
    #[serde(default)]
    pub slug: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Vpc {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub ip_range: Option<String>,
    #[serde(default)]
    pub default: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRuleTarget {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub droplet_ids: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundRule {
    pub protocol: String,
    pub ports: String,
    pub sources: FirewallRuleTarget,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRule {
    pub protocol: String,
    pub ports: String,
    pub destinations: FirewallRuleTarget,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Firewall {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub droplet_ids: Option<Vec<u64>>,
    #[serde(default)]
    pub inbound_rules: Option<Vec<InboundRule>>,
    #[serde(default)]
    pub outbound_rules: Option<Vec<OutboundRule>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FirewallCreate {
    pub name: String,
    pub inbound_rules: Vec<InboundRule>,
    pub outbound_rules: Vec<OutboundRule>,
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Tag {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Account {
    #[serde(default)]
    pub droplet_limit: Option<u64>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub status_message: Option<String>,
    #[serde(default)]
    pub email_verified: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Region {
    pub slug: String,
    #[serde(default)]
    pub available: bool,
    #[serde(default)]
    pub sizes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Size {
    pub slug: String,
    #[serde(default)]
    pub available: bool,
    #[serde(default)]
    pub regions: Vec<String>,
}

/// An image as `images_get` describes it (only what preflight reads).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Image {
    pub id: u64,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Regions the image can be used in.
    #[serde(default)]
    pub regions: Vec<String>,
    /// `available` once usable (custom images go through `NEW`, `pending`).
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SshKey {
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub public_key: Option<String>,
    pub name: String,
}

/// `image` in a create request: the spec's `oneOf [string, integer]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ImageValue {
    Slug(String),
    Id(u64),
}

/// One entry of `ssh_keys` in a create request: id or fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SshKeyValue {
    Id(u64),
    Fingerprint(String),
}

/// Body of `POST /v2/droplets`: a single create (`name`) or a multiple
/// create (`names`, at most [`MAX_NAMES_PER_CREATE`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DropletCreate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    pub region: String,
    pub size: String,
    pub image: ImageValue,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<SshKeyValue>,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_uuid: Option<String>,
}

/// "Up to ten Droplets may be created this way at a time" (droplets_create).
pub const MAX_NAMES_PER_CREATE: usize = 10;

/// `user_data` "may not exceed 64 KiB in size" (droplet_create).
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropletActionType {
    Reboot,
    PowerCycle,
    Shutdown,
    PowerOff,
    PowerOn,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Action {
    pub id: u64,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}
