//! The DigitalOcean API v2 client: one method per operation this crate uses,
//! over one request path that owns timeouts, retries, rate limits and
//! pagination.
//!
//! Retry rules, and why:
//! - 429: always retried, for every method, after `retry-after` (burst
//!   limit) or `ratelimit-reset` (hourly limit): a 429 means the request was
//!   refused before it did anything.
//! - 5xx, timeouts, connection errors: retried with capped exponential
//!   backoff and jitter only for requests that are safe to repeat (reads,
//!   deletes, tag and firewall assignments). For creates the outcome is
//!   unknown — the server may have acted before the answer was lost — so the
//!   client returns [`ApiError::OutcomeUnknown`] and the caller re-lists
//!   before trying again (see `reconcile`).
//! - Other 4xx: returned at once with the API's `id` and `message`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{Instrument, debug, info_span, warn};
use url::Url;

use crate::config::{DigitalOceanConfig, ImageRef};
use crate::model::{
    Account, Action, Droplet, DropletActionType, DropletCreate, Firewall, FirewallCreate, Image,
    Region, Size, SshKey, Tag, Vpc,
};

/// Errors from the API client. Each names the API operation (the spec's
/// `operationId`) and, when the API answered, its `id` and `message`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{operation}: the DigitalOcean API answered {status} {id}: {message}{}", request_id_suffix(.request_id))]
    Api {
        operation: &'static str,
        status: u16,
        id: String,
        message: String,
        request_id: Option<String>,
    },

    #[error(
        "{operation}: no usable answer from the DigitalOcean API at {host} after {attempts} attempt(s): \
         {cause}; check the network path and api_url"
    )]
    Transport {
        operation: &'static str,
        host: String,
        attempts: u32,
        cause: String,
    },

    #[error(
        "{operation}: the request may or may not have been carried out ({cause}); \
         list the resources before sending it again"
    )]
    OutcomeUnknown {
        operation: &'static str,
        cause: String,
    },

    #[error(
        "{operation}: rate limited by the DigitalOcean API for another {wait:?}, longer than this \
         client waits ({max:?}); try again later (limits: 5000 requests/hour, 250/minute per token)"
    )]
    RateLimited {
        operation: &'static str,
        wait: Duration,
        max: Duration,
    },

    #[error("{operation}: unexpected answer from the DigitalOcean API (HTTP {status}): {detail}")]
    Decode {
        operation: &'static str,
        status: u16,
        detail: String,
    },

    #[error(
        "{operation}: the API's pagination link {url} points away from {base}; refusing to send the \
         token there"
    )]
    ForeignLink {
        operation: &'static str,
        url: String,
        base: String,
    },

    #[error(
        "{operation}: the list changed while its pages were read ({detail}), {attempts} times in a \
         row; try again when the account is quieter"
    )]
    InconsistentListing {
        operation: &'static str,
        attempts: u32,
        detail: String,
    },

    #[error("could not set up the HTTPS client for the DigitalOcean API: {0}")]
    Setup(String),
}

fn request_id_suffix(id: &Option<String>) -> String {
    match id {
        Some(id) => format!(" (request id {id})"),
        None => String::new(),
    }
}

impl ApiError {
    /// The HTTP status the API answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Api { status, .. } | ApiError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True when a non-idempotent request may have been carried out even
    /// though no success came back.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ApiError::OutcomeUnknown { .. })
    }

    pub fn operation(&self) -> &'static str {
        match self {
            ApiError::Api { operation, .. }
            | ApiError::Transport { operation, .. }
            | ApiError::OutcomeUnknown { operation, .. }
            | ApiError::RateLimited { operation, .. }
            | ApiError::Decode { operation, .. }
            | ApiError::ForeignLink { operation, .. }
            | ApiError::InconsistentListing { operation, .. } => operation,
            ApiError::Setup(_) => "setup",
        }
    }
}

/// Time as the client sees it. Injected so tests and benchmarks can shrink
/// waits while still checking what the client asked to wait.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The real clock: `SystemTime::now` and `tokio::time::sleep`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// How hard the client tries before giving up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts for a request that fails with 5xx or a transport error
    /// (idempotent requests only), the first included.
    pub max_attempts: u32,
    /// First backoff delay; doubles per attempt up to `max_delay`. The delay
    /// used is drawn between half and all of it (jitter), so clients that
    /// failed together do not retry together.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// 429 answers tolerated for one request before giving up.
    pub max_rate_limit_retries: u32,
    /// Longest single wait for a rate limit to reset. The hourly limit can
    /// reset up to an hour away; past this the call fails with
    /// [`ApiError::RateLimited`] instead of hanging.
    pub max_rate_limit_wait: Duration,
    /// Timeout of one HTTP request, connection included.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_rate_limit_retries: 30,
            max_rate_limit_wait: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    }
}

/// What the client has done so far; the benchmark and tests read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Requests sent again after a 429, a 5xx or a transport error.
    pub retries: u64,
    pub rate_limited: u64,
    pub server_errors: u64,
    pub transport_errors: u64,
    /// Total time the client asked its clock to sleep (backoff, rate limits).
    pub waited: Duration,
    /// Requests per operation (spec `operationId`), retries included.
    pub by_operation: BTreeMap<&'static str, u64>,
}

/// Whether a request may be repeated after an unknown outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Safety {
    Idempotent,
    NotIdempotent,
}

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

/// A DigitalOcean API client. Cheap to clone; clones share statistics and
/// the rate-limit state.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: HeaderValue,
    policy: RetryPolicy,
    clock: Arc<dyn Clock>,
    stats: Mutex<CallStats>,
    /// Set when an answer said `ratelimit-remaining: 0`: no request leaves
    /// before this time, since it would only earn a 429.
    paused_until: Mutex<Option<SystemTime>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base.as_str())
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with the default retry policy (its request timeout taken
    /// from the config) and the system clock.
    pub fn new(config: &DigitalOceanConfig) -> Result<Client, ApiError> {
        let policy = RetryPolicy {
            request_timeout: config.timeouts.request,
            ..RetryPolicy::default()
        };
        Client::with_policy(config, policy, Arc::new(SystemClock))
    }

    pub fn with_policy(
        config: &DigitalOceanConfig,
        policy: RetryPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Client, ApiError> {
        let http = build_http(&policy)?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", config.token.expose()))
            // The token was checked to be visible ASCII, so this cannot
            // fail; the message must not echo it anyway.
            .map_err(|_| ApiError::Setup("the API token is not a valid header value".into()))?;
        // Keeps the header out of hyper's and reqwest's debug output.
        auth.set_sensitive(true);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base: config.api_url.clone(),
                auth,
                policy,
                clock,
                stats: Mutex::new(CallStats::default()),
                paused_until: Mutex::new(None),
            }),
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.inner.policy
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn stats(&self) -> CallStats {
        lock(&self.inner.stats).clone()
    }

    fn url(&self, path: &str) -> Url {
        // Paths are static strings of this crate ("v2/..."): a join failure
        // would be a bug here, and base always ends with '/'.
        let mut url = self.inner.base.clone();
        {
            let mut segs = match url.path_segments_mut() {
                Ok(s) => s,
                Err(()) => return self.inner.base.clone(),
            };
            segs.pop_if_empty();
            for s in path.split('/') {
                segs.push(s);
            }
        }
        url
    }

    fn url_with(&self, path: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty();
            segs.extend(path);
        }
        url
    }

    // ---- operations -------------------------------------------------------

    /// `account_get`
    pub async fn account(&self) -> Result<Account, ApiError> {
        let op = "account_get";
        let v: Value = self.get_json(op, self.url("v2/account")).await?;
        field(op, v, "account")
    }

    /// `droplets_list` with `tag_name`, all pages.
    pub async fn list_droplets_by_tag(&self, tag: &str) -> Result<Vec<Droplet>, ApiError> {
        self.list_all(
            "droplets_list",
            self.url("v2/droplets"),
            &[("tag_name", tag)],
            "droplets",
            |d: &Droplet| d.id.to_string(),
        )
        .await
    }

    /// `droplets_get`; `None` when the droplet does not exist.
    pub async fn get_droplet(&self, id: u64) -> Result<Option<Droplet>, ApiError> {
        let op = "droplets_get";
        match self
            .get_json::<Value>(op, self.url_with(&["v2", "droplets", &id.to_string()]))
            .await
        {
            Ok(v) => field(op, v, "droplet").map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `droplets_create`, single or multiple. Not retried on 5xx or
    /// transport errors: see the module docs.
    pub async fn create_droplets(&self, req: &DropletCreate) -> Result<Vec<Droplet>, ApiError> {
        let op = "droplets_create";
        let reply = self
            .send(
                op,
                Method::POST,
                self.url("v2/droplets"),
                Some(to_body(op, req)?),
                Safety::NotIdempotent,
            )
            .await?;
        let v: Value = decode(op, &reply)?;
        if req.names.is_some() {
            field(op, v, "droplets")
        } else {
            field::<Droplet>(op, v, "droplet").map(|d| vec![d])
        }
    }

    /// A DELETE that is done when the thing is gone: `false` when it already was
    /// (404), so a retried or repeated teardown is not an error.
    async fn delete(&self, op: &'static str, url: Url) -> Result<bool, ApiError> {
        match self
            .send(op, Method::DELETE, url, None, Safety::Idempotent)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `droplets_destroy`; `false` when the droplet was already gone.
    pub async fn delete_droplet(&self, id: u64) -> Result<bool, ApiError> {
        let op = "droplets_destroy";
        let url = self.url_with(&["v2", "droplets", &id.to_string()]);
        self.delete(op, url).await
    }

    /// `droplets_destroy_byTag`; `false` when the tag does not exist.
    pub async fn delete_droplets_by_tag(&self, tag: &str) -> Result<bool, ApiError> {
        let op = "droplets_destroy_byTag";
        let mut url = self.url("v2/droplets");
        url.query_pairs_mut().append_pair("tag_name", tag);
        self.delete(op, url).await
    }

    /// `dropletActions_post` (reboot, power cycle, ...).
    pub async fn droplet_action(
        &self,
        id: u64,
        action: DropletActionType,
    ) -> Result<Action, ApiError> {
        let op = "dropletActions_post";
        let url = self.url_with(&["v2", "droplets", &id.to_string(), "actions"]);
        let body = to_body(op, &json!({ "type": action }))?;
        let reply = self
            .send(op, Method::POST, url, Some(body), Safety::NotIdempotent)
            .await?;
        field(op, decode(op, &reply)?, "action")
    }

    /// `tags_create`. Creating an existing tag is harmless, so this is
    /// retried like a read; the answer carries the canonical spelling.
    pub async fn create_tag(&self, name: &str) -> Result<Tag, ApiError> {
        let op = "tags_create";
        let body = to_body(op, &json!({ "name": name }))?;
        let reply = self
            .send(
                op,
                Method::POST,
                self.url("v2/tags"),
                Some(body),
                Safety::Idempotent,
            )
            .await?;
        field(op, decode(op, &reply)?, "tag")
    }

    /// `tags_assign_resources` for droplets.
    pub async fn tag_droplets(&self, tag: &str, ids: &[u64]) -> Result<(), ApiError> {
        let op = "tags_assign_resources";
        let resources: Vec<Value> = ids
            .iter()
            .map(|id| json!({ "resource_id": id.to_string(), "resource_type": "droplet" }))
            .collect();
        let body = to_body(op, &json!({ "resources": resources }))?;
        let url = self.url_with(&["v2", "tags", tag, "resources"]);
        self.send(op, Method::POST, url, Some(body), Safety::Idempotent)
            .await
            .map(|_| ())
    }

    /// `vpcs_list`, all pages.
    pub async fn list_vpcs(&self) -> Result<Vec<Vpc>, ApiError> {
        self.list_all("vpcs_list", self.url("v2/vpcs"), &[], "vpcs", |v: &Vpc| {
            v.id.clone()
        })
        .await
    }

    /// `vpcs_get`; `None` when it does not exist.
    pub async fn get_vpc(&self, id: &str) -> Result<Option<Vpc>, ApiError> {
        let op = "vpcs_get";
        match self
            .get_json::<Value>(op, self.url_with(&["v2", "vpcs", id]))
            .await
        {
            Ok(v) => field(op, v, "vpc").map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `vpcs_create`. Not retried on an unknown outcome (names are unique:
    /// the caller re-lists and adopts).
    pub async fn create_vpc(
        &self,
        name: &str,
        region: &str,
        description: &str,
        ip_range: Option<&str>,
    ) -> Result<Vpc, ApiError> {
        let op = "vpcs_create";
        let mut body = json!({ "name": name, "region": region, "description": description });
        if let Some(range) = ip_range {
            body["ip_range"] = json!(range);
        }
        let reply = self
            .send(
                op,
                Method::POST,
                self.url("v2/vpcs"),
                Some(to_body(op, &body)?),
                Safety::NotIdempotent,
            )
            .await?;
        field(op, decode(op, &reply)?, "vpc")
    }

    /// `delete_vpc` (upstream operation outside the shared subset). The API
    /// refuses (403) while the VPC has members or is a region's default.
    pub async fn delete_vpc(&self, id: &str) -> Result<bool, ApiError> {
        let op = "delete_vpc";
        let url = self.url_with(&["v2", "vpcs", id]);
        self.delete(op, url).await
    }

    /// `firewalls_list`, all pages.
    pub async fn list_firewalls(&self) -> Result<Vec<Firewall>, ApiError> {
        self.list_all(
            "firewalls_list",
            self.url("v2/firewalls"),
            &[],
            "firewalls",
            |f: &Firewall| f.id.clone(),
        )
        .await
    }

    /// `firewalls_get`; `None` when it does not exist.
    pub async fn get_firewall(&self, id: &str) -> Result<Option<Firewall>, ApiError> {
        let op = "firewalls_get";
        match self
            .get_json::<Value>(op, self.url_with(&["v2", "firewalls", id]))
            .await
        {
            Ok(v) => field(op, v, "firewall").map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `firewalls_create`. Not retried on an unknown outcome.
    pub async fn create_firewall(&self, req: &FirewallCreate) -> Result<Firewall, ApiError> {
        let op = "firewalls_create";
        let reply = self
            .send(
                op,
                Method::POST,
                self.url("v2/firewalls"),
                Some(to_body(op, req)?),
                Safety::NotIdempotent,
            )
            .await?;
        field(op, decode(op, &reply)?, "firewall")
    }

    /// `firewalls_add_tags`.
    pub async fn add_firewall_tags(&self, id: &str, tags: &[String]) -> Result<(), ApiError> {
        let op = "firewalls_add_tags";
        let url = self.url_with(&["v2", "firewalls", id, "tags"]);
        let body = to_body(op, &json!({ "tags": tags }))?;
        self.send(op, Method::POST, url, Some(body), Safety::Idempotent)
            .await
            .map(|_| ())
    }

    /// `firewalls_assign_droplets`.
    pub async fn assign_firewall_droplets(&self, id: &str, ids: &[u64]) -> Result<(), ApiError> {
        let op = "firewalls_assign_droplets";
        let url = self.url_with(&["v2", "firewalls", id, "droplets"]);
        let body = to_body(op, &json!({ "droplet_ids": ids }))?;
        self.send(op, Method::POST, url, Some(body), Safety::Idempotent)
            .await
            .map(|_| ())
    }

    /// `delete_firewall` (upstream operation outside the shared subset).
    pub async fn delete_firewall(&self, id: &str) -> Result<bool, ApiError> {
        let op = "delete_firewall";
        let url = self.url_with(&["v2", "firewalls", id]);
        self.delete(op, url).await
    }

    /// `regions_list`, all pages.
    pub async fn list_regions(&self) -> Result<Vec<Region>, ApiError> {
        self.list_all(
            "regions_list",
            self.url("v2/regions"),
            &[],
            "regions",
            |r: &Region| r.slug.clone(),
        )
        .await
    }

    /// `images_get` by slug or numeric id (the API takes either in the
    /// path); `None` when no such image exists for this account.
    pub async fn get_image(&self, image: &ImageRef) -> Result<Option<Image>, ApiError> {
        let op = "images_get";
        let key = match image {
            ImageRef::Slug(slug) => slug.clone(),
            ImageRef::Id(id) => id.to_string(),
        };
        match self
            .get_json::<Value>(op, self.url_with(&["v2", "images", &key]))
            .await
        {
            Ok(v) => field(op, v, "image").map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `droplets_list` without a filter, all pages: every (non-GPU)
    /// droplet of the account, which is what its droplet limit counts.
    pub async fn list_droplets(&self) -> Result<Vec<Droplet>, ApiError> {
        self.list_all(
            "droplets_list",
            self.url("v2/droplets"),
            &[],
            "droplets",
            |d: &Droplet| d.id.to_string(),
        )
        .await
    }

    /// `sizes_list`, all pages.
    pub async fn list_sizes(&self) -> Result<Vec<Size>, ApiError> {
        self.list_all(
            "sizes_list",
            self.url("v2/sizes"),
            &[],
            "sizes",
            |s: &Size| s.slug.clone(),
        )
        .await
    }

    /// `sshKeys_list`, all pages. This endpoint has its own limit (10 GETs
    /// per minute), so callers should list once and keep the answer.
    pub async fn list_ssh_keys(&self) -> Result<Vec<SshKey>, ApiError> {
        self.list_all(
            "sshKeys_list",
            self.url("v2/account/keys"),
            &[],
            "ssh_keys",
            |k: &SshKey| format!("{:?}/{:?}", k.id, k.fingerprint),
        )
        .await
    }

    /// `sshKeys_create`.
    pub async fn create_ssh_key(&self, name: &str, public_key: &str) -> Result<SshKey, ApiError> {
        let op = "sshKeys_create";
        let body = to_body(op, &json!({ "name": name, "public_key": public_key }))?;
        let reply = self
            .send(
                op,
                Method::POST,
                self.url("v2/account/keys"),
                Some(body),
                Safety::NotIdempotent,
            )
            .await?;
        field(op, decode(op, &reply)?, "ssh_key")
    }

    /// `sshKeys_delete` by id; false when it was gone already.
    pub async fn delete_ssh_key(&self, id: u64) -> Result<bool, ApiError> {
        let url = self.url_with(&["v2", "account", "keys", &id.to_string()]);
        self.delete("sshKeys_delete", url).await
    }

    // ---- plumbing ---------------------------------------------------------

    async fn get_json<T: DeserializeOwned>(
        &self,
        op: &'static str,
        url: Url,
    ) -> Result<T, ApiError> {
        let reply = self
            .send(op, Method::GET, url, None, Safety::Idempotent)
            .await?;
        decode(op, &reply)
    }

    /// Reads every page of a list by following `links.pages.next`.
    ///
    /// A list that changes between pages can skip an item, and a skipped
    /// droplet would be created again; so the listing is accepted only if
    /// every page reported the same `meta.total` and that many distinct items
    /// were read, and is otherwise read again from the start.
    async fn list_all<T: DeserializeOwned>(
        &self,
        op: &'static str,
        first: Url,
        query: &[(&str, &str)],
        key: &str,
        id_of: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, ApiError> {
        const ATTEMPTS: u32 = 3;
        const MAX_PAGES: usize = 10_000;
        let mut start = first;
        {
            let mut q = start.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
            // The largest page the API allows: fewest requests.
            q.append_pair("per_page", "200");
        }
        let mut detail = String::new();
        for _ in 0..ATTEMPTS {
            let mut items: Vec<T> = Vec::new();
            let mut seen = HashSet::new();
            let mut totals = Vec::new();
            let mut next = Some(start.clone());
            let mut pages = 0;
            while let Some(url) = next.take() {
                pages += 1;
                if pages > MAX_PAGES {
                    return Err(ApiError::Decode {
                        operation: op,
                        status: 200,
                        detail: format!("more than {MAX_PAGES} pages; the next links loop"),
                    });
                }
                let v: Value = self.get_json(op, url).await?;
                if let Some(total) = v.pointer("/meta/total").and_then(Value::as_u64) {
                    totals.push(total);
                }
                if let Some(link) = v.pointer("/links/pages/next").and_then(Value::as_str) {
                    next = Some(self.same_origin(op, link)?);
                }
                let page: Vec<T> = match v.get(key) {
                    Some(arr) => {
                        serde_json::from_value(arr.clone()).map_err(|e| ApiError::Decode {
                            operation: op,
                            status: 200,
                            detail: format!("`{key}`: {e}"),
                        })?
                    }
                    None => {
                        return Err(ApiError::Decode {
                            operation: op,
                            status: 200,
                            detail: format!("no `{key}` in the answer"),
                        });
                    }
                };
                for item in page {
                    if seen.insert(id_of(&item)) {
                        items.push(item);
                    }
                }
            }
            let consistent_totals = totals.windows(2).all(|w| w[0] == w[1]);
            let expected = totals.first().copied();
            match expected {
                Some(total) if consistent_totals && total == items.len() as u64 => {
                    return Ok(items);
                }
                None if pages == 1 => return Ok(items),
                _ => {
                    detail = format!(
                        "meta.total per page {totals:?}, {} distinct items read",
                        items.len()
                    );
                    warn!(operation = op, %detail, "listing changed while paging; reading it again");
                }
            }
        }
        Err(ApiError::InconsistentListing {
            operation: op,
            attempts: ATTEMPTS,
            detail,
        })
    }

    fn same_origin(&self, op: &'static str, link: &str) -> Result<Url, ApiError> {
        let base = &self.inner.base;
        let url = Url::parse(link).map_err(|e| ApiError::Decode {
            operation: op,
            status: 200,
            detail: format!("pagination link {link:?}: {e}"),
        })?;
        if url.origin() != base.origin() {
            return Err(ApiError::ForeignLink {
                operation: op,
                url: link.to_owned(),
                base: base.origin().ascii_serialization(),
            });
        }
        Ok(url)
    }

    fn count(&self, f: impl FnOnce(&mut CallStats)) {
        f(&mut lock(&self.inner.stats));
    }

    /// Sleeps on the client's clock and counts the wait in the statistics.
    pub(crate) async fn sleep(&self, d: Duration) {
        self.count(|s| s.waited += d);
        self.inner.clock.sleep(d).await;
    }

    /// Waits out a rate limit an earlier answer announced.
    async fn respect_pause(&self, op: &'static str) -> Result<(), ApiError> {
        let until = *lock(&self.inner.paused_until);
        if let Some(until) = until {
            if let Ok(wait) = until.duration_since(self.inner.clock.now()) {
                if wait > self.inner.policy.max_rate_limit_wait {
                    return Err(ApiError::RateLimited {
                        operation: op,
                        wait,
                        max: self.inner.policy.max_rate_limit_wait,
                    });
                }
                debug!(
                    operation = op,
                    wait_ms = wait.as_millis() as u64,
                    "rate limit exhausted; waiting for reset"
                );
                self.sleep(wait).await;
            }
            *lock(&self.inner.paused_until) = None;
        }
        Ok(())
    }

    fn note_budget(&self, headers: &HeaderMap) {
        let remaining = header_u64(headers, "ratelimit-remaining");
        let reset = header_u64(headers, "ratelimit-reset");
        if let (Some(0), Some(reset)) = (remaining, reset) {
            // A reset no clock can reach (a hostile or broken answer) is no
            // pause: the next 429 backs off instead.
            *lock(&self.inner.paused_until) = UNIX_EPOCH.checked_add(Duration::from_secs(reset));
        }
    }

    /// How long a 429 asks us to wait: `retry-after` (burst limit) if
    /// present, else until `ratelimit-reset` (epoch seconds, so up to one
    /// more second), else the backoff.
    fn rate_limit_wait(&self, headers: &HeaderMap, retry: u32) -> Duration {
        if let Some(secs) = header_u64(headers, "retry-after") {
            return Duration::from_secs(secs);
        }
        if let Some(at) = header_u64(headers, "ratelimit-reset")
            .and_then(|reset| UNIX_EPOCH.checked_add(Duration::from_secs(reset)))
        {
            // The hourly limit resets within the hour: a later reset is
            // not waited for longer than that.
            let wait = at
                .duration_since(self.inner.clock.now())
                .unwrap_or(Duration::ZERO)
                .min(Duration::from_secs(3600));
            // The reset is whole seconds; a little extra keeps us from
            // arriving just before it.
            return wait + Duration::from_millis(rand::rng().random_range(0..=250));
        }
        self.inner.policy.backoff(retry)
    }

    async fn send(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        safety: Safety,
    ) -> Result<Reply, ApiError> {
        let span =
            info_span!("digitalocean_api", operation = op, method = %method, path = url.path());
        self.send_inner(op, method, url, body, safety)
            .instrument(span)
            .await
    }

    async fn send_inner(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        safety: Safety,
    ) -> Result<Reply, ApiError> {
        let policy = &self.inner.policy;
        let host = url.host_str().unwrap_or("?").to_owned();
        let mut failures = 0u32;
        let mut limited = 0u32;
        let mut sent = 0u32;
        loop {
            self.respect_pause(op).await?;
            if sent > 0 {
                self.count(|s| s.retries += 1);
            }
            sent += 1;
            self.count(|s| {
                s.requests += 1;
                *s.by_operation.entry(op).or_default() += 1;
            });
            let mut req = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, self.inner.auth.clone())
                .timeout(policy.request_timeout);
            if let Some(body) = &body {
                req = req
                    .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                    .body(body.clone());
            }
            let result = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    resp.bytes().await.map(|b| (status, headers, b.to_vec()))
                }
                Err(e) => Err(e),
            };
            let (status, headers, bytes) = match result {
                Ok(ok) => ok,
                Err(e) => {
                    self.count(|s| s.transport_errors += 1);
                    let cause = error_chain(&e);
                    if safety == Safety::NotIdempotent {
                        return Err(ApiError::OutcomeUnknown {
                            operation: op,
                            cause,
                        });
                    }
                    failures += 1;
                    if failures >= policy.max_attempts {
                        return Err(ApiError::Transport {
                            operation: op,
                            host,
                            attempts: sent,
                            cause,
                        });
                    }
                    let wait = policy.backoff(failures);
                    debug!(operation = op, attempt = sent, error = %cause, wait_ms = wait.as_millis() as u64, "transport error; retrying");
                    self.sleep(wait).await;
                    continue;
                }
            };
            self.note_budget(&headers);

            if status == StatusCode::TOO_MANY_REQUESTS {
                self.count(|s| s.rate_limited += 1);
                limited += 1;
                let wait = self.rate_limit_wait(&headers, limited);
                if limited > policy.max_rate_limit_retries || wait > policy.max_rate_limit_wait {
                    return Err(ApiError::RateLimited {
                        operation: op,
                        wait,
                        max: policy.max_rate_limit_wait,
                    });
                }
                // The pause recorded from the headers is the same wait.
                *lock(&self.inner.paused_until) = None;
                debug!(
                    operation = op,
                    attempt = sent,
                    wait_ms = wait.as_millis() as u64,
                    "rate limited; waiting"
                );
                self.sleep(wait).await;
                continue;
            }

            if status.is_server_error() {
                self.count(|s| s.server_errors += 1);
                let (id, message, request_id) = api_error_body(&bytes);
                if safety == Safety::NotIdempotent {
                    return Err(ApiError::OutcomeUnknown {
                        operation: op,
                        cause: format!("HTTP {} {id}: {message}", status.as_u16()),
                    });
                }
                failures += 1;
                if failures >= policy.max_attempts {
                    return Err(ApiError::Api {
                        operation: op,
                        status: status.as_u16(),
                        id,
                        message,
                        request_id,
                    });
                }
                let wait = policy.backoff(failures);
                debug!(
                    operation = op,
                    attempt = sent,
                    status = status.as_u16(),
                    wait_ms = wait.as_millis() as u64,
                    "server error; retrying"
                );
                self.sleep(wait).await;
                continue;
            }

            if status.is_success() {
                return Ok(Reply {
                    status,
                    body: bytes,
                });
            }

            let (id, message, request_id) = api_error_body(&bytes);
            return Err(ApiError::Api {
                operation: op,
                status: status.as_u16(),
                id,
                message,
                request_id,
            });
        }
    }
}

fn build_http(policy: &RetryPolicy) -> Result<reqwest::Client, ApiError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    // ring, like the rest of the workspace; the platform verifier, so the
    // system's trust store (and its updates) decide which CAs are trusted.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| ApiError::Setup(e.to_string()))?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(policy.request_timeout)
        .user_agent(concat!("apiary-digitalocean/", env!("CARGO_PKG_VERSION")))
        // Redirects would carry the Authorization header to wherever the
        // Location points; the API does not redirect.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ApiError::Setup(error_chain(&e)))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of a
    // counter; the data is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

fn api_error_body(bytes: &[u8]) -> (String, String, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Body {
        id: String,
        message: String,
        #[serde(default)]
        request_id: Option<String>,
    }
    match serde_json::from_slice::<Body>(bytes) {
        Ok(b) => (b.id, b.message, b.request_id),
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let text: String = text.chars().take(200).collect();
            ("unknown".into(), format!("(no error body: {text:?})"), None)
        }
    }
}

fn to_body(op: &'static str, value: &impl Serialize) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Decode {
        operation: op,
        status: 0,
        detail: format!("could not encode the request: {e}"),
    })
}

fn decode<T: DeserializeOwned>(op: &'static str, reply: &Reply) -> Result<T, ApiError> {
    let bytes: &[u8] = if reply.body.is_empty() {
        b"null"
    } else {
        &reply.body
    };
    serde_json::from_slice(bytes).map_err(|e| ApiError::Decode {
        operation: op,
        status: reply.status.as_u16(),
        detail: e.to_string(),
    })
}

fn field<T: DeserializeOwned>(op: &'static str, mut v: Value, key: &str) -> Result<T, ApiError> {
    let inner = v
        .get_mut(key)
        .map(Value::take)
        .ok_or_else(|| ApiError::Decode {
            operation: op,
            status: 200,
            detail: format!("no `{key}` in the answer"),
        })?;
    serde_json::from_value(inner).map_err(|e| ApiError::Decode {
        operation: op,
        status: 200,
        detail: format!("`{key}`: {e}"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for retry in 1..40 {
            let d = p.backoff(retry);
            let full = (Duration::from_millis(100) * 2u32.saturating_pow(retry - 1).min(1 << 20))
                .min(Duration::from_millis(1000));
            assert!(
                d >= full / 2 && d <= full,
                "retry {retry}: {d:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn error_messages_name_operation_and_api_id() {
        let e = ApiError::Api {
            operation: "droplets_create",
            status: 422,
            id: "unprocessable_entity".into(),
            message: "Region is not available".into(),
            request_id: Some("r-1".into()),
        };
        let s = e.to_string();
        assert!(s.contains("droplets_create") && s.contains("unprocessable_entity"));
        assert!(s.contains("Region is not available") && s.contains("r-1"));
    }
}
