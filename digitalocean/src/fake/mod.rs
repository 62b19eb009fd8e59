//! A fake DigitalOcean API v2 on loopback, for tests and the benchmark.
//!
//! It implements every operation of `openapi/openapi-subset.yaml` (plus the
//! two deletes in `openapi/supplement.yaml`) over in-memory droplets, tags,
//! VPCs, firewalls and SSH keys, with the real API's habits: droplets start
//! `new` and turn `active` after [`FakeOptions::boot_delay`] (their addresses
//! appear then); lists paginate (`per_page` up to 200, `links.pages` only
//! when there is more than one page, `meta.total` always); every answer
//! carries the `ratelimit-*` headers; duplicate droplet names are allowed
//! (as upstream), which is what makes "never a duplicate" worth testing.
//!
//! Every request and every answer is checked against the spec by
//! [`SpecValidator`]; departures are recorded ([`FakeApi::violations`]), and
//! in strict mode (the default) a request that breaks the spec is refused
//! with 400, so a client bug cannot pass unnoticed.
//!
//! Faults ([`Fault`]) are injected per operation and count, or at random
//! with a seeded generator ([`FakeOptions::random`]).

pub mod spec;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::debug;

use crate::client::Clock;
use crate::config::Ipv4Cidr;

pub use spec::{Direction, SpecError, SpecValidator, Violation};

/// Errors starting the fake.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("the fake cannot load the OpenAPI spec: {0}")]
    Spec(#[from] SpecError),
    #[error("the fake cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// How a lost answer is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// The connection is closed without an answer.
    Drop,
    /// A 500 is sent instead of the real answer.
    ServerError,
}

/// A fault for the next `count` requests of `operation` (an `operationId`;
/// `None` for any).
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 429 before doing anything, with `ratelimit-reset` at now + `reset_in`
    /// and, when set, `retry-after`.
    RateLimit {
        operation: Option<String>,
        count: u32,
        reset_in: Duration,
        retry_after: Option<u64>,
    },
    /// The limit is exhausted for `duration`: every request until then gets
    /// 429 (as upstream), and requests that come before the announced reset
    /// are counted in [`FakeApi::early_requests`].
    RateLimitWindow { duration: Duration },
    /// 500 before doing anything.
    ServerError {
        operation: Option<String>,
        count: u32,
    },
    /// The request is carried out, then its answer is lost.
    LoseResponse {
        operation: String,
        count: u32,
        how: Loss,
    },
    /// The request is carried out, and answered after `delay`.
    Slow {
        operation: Option<String>,
        count: u32,
        delay: Duration,
    },
}

/// Faults drawn at random for requests no scripted fault claimed.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomFaults {
    /// Share of requests answered 429 (`ratelimit-reset` one second ahead,
    /// `retry-after: 1` for half of them, as for the burst limit).
    pub rate_limit: f64,
    /// Share of requests answered 500.
    pub server_error: f64,
    /// For writes, the 500 comes after the request was carried out (the
    /// harsher case: the client cannot know it happened).
    pub server_error_after_apply: bool,
    pub seed: u64,
}

#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// The token requests must carry; `None` accepts any bearer token.
    pub token: Option<String>,
    /// Time from create to `active`.
    pub boot_delay: Duration,
    /// Droplets with these names stay `new` forever.
    pub stuck_names: HashSet<String>,
    pub random: Option<RandomFaults>,
    /// Refuse requests that break the spec with 400 (default true).
    pub strict: bool,
    pub droplet_limit: u64,
    /// The account's `status` (`active`, `warning`, `locked`) and
    /// `status_message`, as `account_get` reports them.
    pub account_status: (String, String),
    /// Where droplets' public addresses come from: `None` for the
    /// documentation ranges (RFC 5737, where nothing real answers), or
    /// these addresses in order (wrapping when all are taken). The droplet
    /// simulator's laptop mode puts its droplets on a range this machine
    /// may talk to (e.g. 198.18.0.100 up to .254).
    pub public_range: Option<std::ops::RangeInclusive<Ipv4Addr>>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            token: None,
            boot_delay: Duration::from_millis(50),
            stuck_names: HashSet::new(),
            random: None,
            strict: true,
            droplet_limit: 1000,
            account_status: ("active".into(), String::new()),
            public_range: None,
        }
    }
}

/// One request as the fake saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub operation: Option<String>,
    pub method: String,
    pub path: String,
    /// `None` when the connection was dropped instead of answered.
    pub status: Option<u16>,
    pub fault: Option<&'static str>,
}

/// Where and what a new droplet is.
#[derive(Clone, Copy)]
struct Kind<'a> {
    region: &'a str,
    size: &'a str,
    image: &'a str,
}

/// A droplet as stored in the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeDroplet {
    pub id: u64,
    pub name: String,
    pub region: String,
    pub size: String,
    /// The image's slug (an image asked for by id is stored by its slug).
    pub image: String,
    pub tags: Vec<String>,
    pub vpc_uuid: String,
    pub user_data: Option<String>,
    pub created_at: SystemTime,
    pub public_ipv4: Ipv4Addr,
    pub private_ipv4: Ipv4Addr,
    pub powered_off: bool,
    /// The public keys of the SSH keys the create named (by id or
    /// fingerprint), in its order: what DigitalOcean puts in root's
    /// `authorized_keys`. The API never shows them on a droplet; the
    /// droplet simulator reads them here.
    pub ssh_keys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeVpc {
    pub id: String,
    pub name: String,
    pub description: String,
    pub region: String,
    pub ip_range: String,
    pub default: bool,
    pub created_at: SystemTime,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FakeFirewall {
    pub id: String,
    pub name: String,
    pub inbound_rules: Value,
    pub outbound_rules: Value,
    pub tags: Vec<String>,
    pub droplet_ids: Vec<u64>,
    pub created_at: SystemTime,
}

#[derive(Clone, Debug)]
struct SshKeyRec {
    id: u64,
    fingerprint: String,
    public_key: String,
    name: String,
}

struct Scripted {
    operation: Option<String>,
    remaining: u32,
    kind: Fault,
}

enum Decision {
    None,
    RateLimit {
        reset: SystemTime,
        retry_after: Option<u64>,
    },
    ServerError,
    Lose(Loss),
    Slow(Duration),
}

impl Decision {
    fn name(&self) -> Option<&'static str> {
        match self {
            Decision::None => None,
            Decision::RateLimit { .. } => Some("rate_limit"),
            Decision::ServerError => Some("server_error"),
            Decision::Lose(Loss::Drop) => Some("lost_drop"),
            Decision::Lose(Loss::ServerError) => Some("lost_500"),
            Decision::Slow(_) => Some("slow"),
        }
    }
}

struct State {
    options: FakeOptions,
    base: String,
    next_id: u64,
    next_action: u64,
    next_ip: u32,
    next_range: u8,
    droplets: BTreeMap<u64, FakeDroplet>,
    /// lowercase → canonical spelling
    tags: BTreeMap<String, String>,
    vpcs: BTreeMap<String, FakeVpc>,
    vpc_hosts: HashMap<String, u32>,
    firewalls: BTreeMap<String, FakeFirewall>,
    ssh_keys: Vec<SshKeyRec>,
    scripted: Vec<Scripted>,
    window_until: Option<SystemTime>,
    early: u64,
    rng: StdRng,
    request_times: VecDeque<SystemTime>,
    log: Vec<RequestRecord>,
    violations: Vec<Violation>,
}

const REGIONS: &[(&str, &str, bool)] = &[
    ("nyc3", "New York 3", true),
    ("fra1", "Frankfurt 1", true),
    ("ams3", "Amsterdam 3", true),
    ("sfo1", "San Francisco 1", false),
];
// slug, memory MB, vcpus, disk GB, price monthly
const SIZES: &[(&str, u64, u64, u64, f64)] = &[
    ("s-1vcpu-1gb", 1024, 1, 25, 6.0),
    ("s-2vcpu-4gb", 4096, 2, 80, 24.0),
    ("s-4vcpu-8gb", 8192, 4, 160, 48.0),
];
// id, slug, distribution, name
const IMAGES: &[(u64, &str, &str, &str)] = &[
    (150_000_001, "debian-12-x64", "Debian", "12 x64"),
    (150_000_002, "ubuntu-24-04-x64", "Ubuntu", "24.04 (LTS) x64"),
];
const RATE_LIMIT: u64 = 5000;

/// A handle on the fake's state: inject faults, read what happened.
/// Cloning shares the state.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    spec: SpecValidator,
}

/// A running fake (on 127.0.0.1 unless started with [`FakeServer::start_on`]).
pub struct FakeServer {
    api: FakeApi,
    addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeServer {
    /// Binds 127.0.0.1:0 and serves until [`FakeServer::shutdown`] or drop.
    pub async fn start(options: FakeOptions) -> Result<FakeServer, FakeError> {
        Self::start_on(options, &[SocketAddr::from(([127, 0, 0, 1], 0))]).await
    }

    /// As [`FakeServer::start`], on each of `addrs` (the first names the
    /// fake in its links and [`FakeServer::url`]; a port 0 after the first
    /// takes the first's port). The droplet simulator's laptop mode serves
    /// the API on loopback and on the public side too (the laptop's
    /// address), where its droplets reach it as a real droplet reaches the
    /// real API.
    pub async fn start_on(
        options: FakeOptions,
        addrs: &[SocketAddr],
    ) -> Result<FakeServer, FakeError> {
        let mut listeners = Vec::new();
        let mut first: Option<SocketAddr> = None;
        for want in addrs {
            let mut want = *want;
            match first {
                Some(first) if want.port() == 0 => want.set_port(first.port()),
                _ => {}
            }
            let bind_error = |source| FakeError::Bind {
                addr: want.to_string(),
                source,
            };
            let listener = TcpListener::bind(want).await.map_err(bind_error)?;
            let bound = listener.local_addr().map_err(bind_error)?;
            first.get_or_insert(bound);
            listeners.push(listener);
        }
        let addr = first.ok_or_else(|| FakeError::Bind {
            addr: "(none)".into(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let api = FakeApi::new(options, &format!("http://{addr}"))?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tasks = listeners
            .into_iter()
            .map(|listener| {
                let serving = api.clone();
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    serving
                        .serve(listener, async move {
                            let _ = rx.wait_for(|stop| *stop).await;
                        })
                        .await;
                })
            })
            .collect();
        Ok(FakeServer {
            api,
            addr,
            stop: Some(tx),
            tasks,
        })
    }

    /// The base URL to put in `api_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the fake listens (the first of its addresses).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn api(&self) -> &FakeApi {
        &self.api
    }

    /// Stops accepting connections and waits for the accept loops to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
    }
}

impl std::ops::Deref for FakeServer {
    type Target = FakeApi;
    fn deref(&self) -> &FakeApi {
        &self.api
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}
impl std::error::Error for Dropped {}

impl FakeApi {
    /// The fake's state, answering as if served at `base` (used in links).
    pub fn new(options: FakeOptions, base: &str) -> Result<FakeApi, FakeError> {
        let spec = SpecValidator::load()?;
        let seed = options.random.as_ref().map_or(0, |r| r.seed);
        let mut state = State {
            options,
            base: base.trim_end_matches('/').to_owned(),
            next_id: 300_000_001,
            next_action: 900_000_001,
            next_ip: 0,
            next_range: 0,
            droplets: BTreeMap::new(),
            tags: BTreeMap::new(),
            vpcs: BTreeMap::new(),
            vpc_hosts: HashMap::new(),
            firewalls: BTreeMap::new(),
            ssh_keys: Vec::new(),
            scripted: Vec::new(),
            window_until: None,
            early: 0,
            rng: StdRng::seed_from_u64(seed),
            request_times: VecDeque::new(),
            log: Vec::new(),
            violations: Vec::new(),
        };
        // Accounts have a default VPC per region they used; start with one
        // per available region, as a new account that made droplets would.
        for (i, (slug, _, available)) in REGIONS.iter().enumerate() {
            if *available {
                let id = state.uuid();
                state.vpcs.insert(
                    id.clone(),
                    FakeVpc {
                        id,
                        name: format!("default-{slug}"),
                        description: String::new(),
                        region: (*slug).to_owned(),
                        ip_range: format!("10.{}.0.0/20", 100 + i),
                        default: true,
                        created_at: UNIX_EPOCH + Duration::from_secs(1_600_000_000),
                    },
                );
            }
        }
        Ok(FakeApi {
            state: Arc::new(Mutex::new(state)),
            spec,
        })
    }

    /// Serves `listener` until `shutdown` completes.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let api = self.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let api = api.clone();
                            async move { api.handle(req).await }
                        });
                        if let Err(e) = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await
                        {
                            debug!(error = %e, "fake connection ended");
                        }
                    });
                }
            }
        }
    }

    /// Adds a scripted fault; faults are used in the order added.
    pub fn inject(&self, fault: Fault) {
        let mut st = lock(&self.state);
        match &fault {
            Fault::RateLimitWindow { duration } => {
                st.window_until = Some(SystemTime::now() + *duration);
            }
            Fault::RateLimit {
                operation, count, ..
            }
            | Fault::ServerError { operation, count }
            | Fault::Slow {
                operation, count, ..
            } => {
                let s = Scripted {
                    operation: operation.clone(),
                    remaining: *count,
                    kind: fault.clone(),
                };
                st.scripted.push(s);
            }
            Fault::LoseResponse {
                operation, count, ..
            } => {
                let s = Scripted {
                    operation: Some(operation.clone()),
                    remaining: *count,
                    kind: fault.clone(),
                };
                st.scripted.push(s);
            }
        }
    }

    /// Makes droplets with this name stay `new` from now on.
    pub fn set_stuck(&self, name: &str) {
        lock(&self.state)
            .options
            .stuck_names
            .insert(name.to_owned());
    }

    pub fn violations(&self) -> Vec<Violation> {
        lock(&self.state).violations.clone()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.state).log.clone()
    }

    /// Requests that arrived while a [`Fault::RateLimitWindow`] was running.
    pub fn early_requests(&self) -> u64 {
        lock(&self.state).early
    }

    pub fn droplets(&self) -> Vec<FakeDroplet> {
        lock(&self.state).droplets.values().cloned().collect()
    }

    pub fn vpcs(&self) -> Vec<FakeVpc> {
        lock(&self.state).vpcs.values().cloned().collect()
    }

    pub fn firewalls(&self) -> Vec<FakeFirewall> {
        lock(&self.state).firewalls.values().cloned().collect()
    }

    /// How many SSH keys the account holds.
    pub fn ssh_key_count(&self) -> usize {
        lock(&self.state).ssh_keys.len()
    }

    /// Canonical tag names.
    pub fn tags(&self) -> Vec<String> {
        lock(&self.state).tags.values().cloned().collect()
    }

    /// Puts a droplet in place as if made earlier (by hand, or by another
    /// tool), in the region's default VPC.
    pub fn seed_droplet(&self, name: &str, tags: &[&str]) -> u64 {
        let mut st = lock(&self.state);
        let vpc = st
            .vpcs
            .values()
            .find(|v| v.default && v.region == "nyc3")
            .map(|v| v.id.clone())
            .unwrap_or_default();
        for t in tags {
            st.ensure_tag(t);
        }
        let tags = tags.iter().map(|t| st.canonical_tag(t)).collect();
        let kind = Kind {
            region: "nyc3",
            size: "s-1vcpu-1gb",
            image: IMAGES[0].1,
        };
        st.insert_droplet(name, kind, tags, &vpc, None, Vec::new())
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let query: Vec<(String, String)> = req
            .uri()
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };

        let check = self
            .spec
            .check_request(&method, &path, &query, &headers, &body);
        let op_label = check
            .operation
            .clone()
            .unwrap_or_else(|| format!("{method} {path}"));
        let now = SystemTime::now();

        let (decision, status, json, limit_headers) = {
            let mut st = lock(&self.state);
            for v in &check.violations {
                st.violations.push(Violation {
                    direction: Direction::Request,
                    operation: op_label.clone(),
                    detail: v.clone(),
                });
            }
            let decision = st.decide(check.operation.as_deref(), &method, now);
            let (status, json) = match &decision {
                Decision::RateLimit { .. } => {
                    error(429, "too_many_requests", "API rate limit exceeded.")
                }
                Decision::ServerError => error(500, "server_error", "Unexpected server-side error"),
                _ => {
                    let bearer = headers
                        .iter()
                        .find(|(k, _)| k == "authorization")
                        .and_then(|(_, v)| v.strip_prefix("Bearer "))
                        .map(str::to_owned);
                    let authorised = match (&bearer, &st.options.token) {
                        (None, _) => false,
                        (Some(b), Some(t)) => b == t,
                        (Some(b), None) => !b.is_empty(),
                    };
                    if !authorised {
                        error(401, "unauthorized", "Unable to authenticate you")
                    } else if st.options.strict && !check.violations.is_empty() {
                        error(400, "bad_request", &check.violations.join("; "))
                    } else if let Some(op) = &check.operation {
                        st.apply(op, &check.path_params, &query, &body, now)
                    } else {
                        not_found()
                    }
                }
            };
            let mut limit_headers = st.rate_headers(now, &decision);
            // Droplet deletes answer 204 with a content-type
            // (`no_content_with_content_type`), unlike other 204s.
            let typed_204 = matches!(
                check.operation.as_deref(),
                Some("droplets_destroy" | "droplets_destroy_byTag")
            );
            if typed_204 && status == 204 {
                limit_headers.push((
                    "content-type".into(),
                    "application/json; charset=utf-8".into(),
                ));
            }
            (decision, status, json, limit_headers)
        };

        let mut answer = (status, json);
        if let Decision::Lose(Loss::ServerError) = decision {
            // What would have been sent is still held to the spec.
            self.check_answer(
                &check.operation,
                &op_label,
                answer.0,
                &limit_headers,
                &answer.1,
            );
            answer = error(500, "server_error", "Unexpected server-side error");
        }
        self.check_answer(
            &check.operation,
            &op_label,
            answer.0,
            &limit_headers,
            &answer.1,
        );
        lock(&self.state).log.push(RequestRecord {
            operation: check.operation.clone(),
            method: method.clone(),
            path: path.clone(),
            status: match decision {
                Decision::Lose(Loss::Drop) => None,
                _ => Some(answer.0),
            },
            fault: decision.name(),
        });

        match decision {
            Decision::Lose(Loss::Drop) => return Err(Dropped),
            Decision::Slow(d) => tokio::time::sleep(d).await,
            _ => {}
        }
        Ok(build_response(answer.0, &limit_headers, answer.1))
    }

    fn check_answer(
        &self,
        operation: &Option<String>,
        label: &str,
        status: u16,
        headers: &[(String, String)],
        body: &Option<Value>,
    ) {
        let Some(op) = operation else { return };
        let bytes = body
            .as_ref()
            .map(|v| serde_json::to_vec(v).unwrap_or_default())
            .unwrap_or_default();
        let mut all = headers.to_vec();
        if body.is_some() && !all.iter().any(|(k, _)| k == "content-type") {
            all.push((
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            ));
        }
        let problems = self.spec.check_response(op, status, &all, &bytes);
        if !problems.is_empty() {
            let mut st = lock(&self.state);
            for p in problems {
                st.violations.push(Violation {
                    direction: Direction::Response,
                    operation: label.to_owned(),
                    detail: p,
                });
            }
        }
    }
}

fn build_response(
    status: u16,
    headers: &[(String, String)],
    body: Option<Value>,
) -> Response<Full<Bytes>> {
    let bytes = body
        .map(|v| serde_json::to_vec(&v).unwrap_or_default())
        .unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes.clone())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            h.insert(name, value);
        }
    }
    if !bytes.is_empty() {
        h.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    resp
}

fn error(status: u16, id: &str, message: &str) -> (u16, Option<Value>) {
    (status, Some(json!({ "id": id, "message": message })))
}

/// The API's 404, word for word.
fn not_found() -> (u16, Option<Value>) {
    error(
        404,
        "not_found",
        "The resource you requested could not be found.",
    )
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// RFC 3339 in UTC, second precision.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = epoch(t);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn netmask(prefix: u8) -> Ipv4Addr {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    Ipv4Addr::from(mask)
}

fn is_tag_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':')
}

fn is_droplet_name(s: &str) -> bool {
    // ^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

impl State {
    fn uuid(&mut self) -> String {
        let mut b: [u8; 16] = self.rng.random();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    fn decide(&mut self, op: Option<&str>, method: &str, now: SystemTime) -> Decision {
        if let Some(until) = self.window_until {
            if now < until {
                self.early += 1;
                return Decision::RateLimit {
                    reset: until,
                    retry_after: None,
                };
            }
            self.window_until = None;
        }
        let found = self.scripted.iter_mut().find(|s| {
            s.remaining > 0 && s.operation.as_deref().is_none_or(|want| op == Some(want))
        });
        if let Some(s) = found {
            s.remaining -= 1;
            return match &s.kind {
                Fault::RateLimit {
                    reset_in,
                    retry_after,
                    ..
                } => Decision::RateLimit {
                    reset: now + *reset_in,
                    retry_after: *retry_after,
                },
                Fault::ServerError { .. } => Decision::ServerError,
                Fault::LoseResponse { how, .. } => Decision::Lose(*how),
                Fault::Slow { delay, .. } => Decision::Slow(*delay),
                Fault::RateLimitWindow { .. } => Decision::None,
            };
        }
        if let Some(r) = self.options.random.clone() {
            let x: f64 = self.rng.random();
            if x < r.rate_limit {
                let burst = self.rng.random::<bool>();
                return Decision::RateLimit {
                    reset: now + Duration::from_secs(1),
                    retry_after: burst.then_some(1),
                };
            }
            if x < r.rate_limit + r.server_error {
                return if r.server_error_after_apply && method != "GET" {
                    Decision::Lose(Loss::ServerError)
                } else {
                    Decision::ServerError
                };
            }
        }
        Decision::None
    }

    fn rate_headers(&mut self, now: SystemTime, decision: &Decision) -> Vec<(String, String)> {
        let hour = Duration::from_secs(3600);
        while self
            .request_times
            .front()
            .is_some_and(|t| now.duration_since(*t).unwrap_or_default() >= hour)
        {
            self.request_times.pop_front();
        }
        self.request_times.push_back(now);
        let used = self.request_times.len() as u64;
        let oldest = self.request_times.front().copied().unwrap_or(now);
        let mut out = vec![("ratelimit-limit".to_owned(), RATE_LIMIT.to_string())];
        match decision {
            Decision::RateLimit { reset, retry_after } => {
                out.push(("ratelimit-remaining".into(), "0".into()));
                // Whole seconds, rounded up, so "reset" is never early.
                let secs = reset
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
                out.push(("ratelimit-reset".into(), secs.to_string()));
                if let Some(r) = retry_after {
                    out.push(("retry-after".into(), r.to_string()));
                }
            }
            _ => {
                out.push((
                    "ratelimit-remaining".into(),
                    RATE_LIMIT.saturating_sub(used).to_string(),
                ));
                out.push(("ratelimit-reset".into(), epoch(oldest + hour).to_string()));
            }
        }
        out
    }

    fn ensure_tag(&mut self, name: &str) -> String {
        let key = name.to_ascii_lowercase();
        self.tags
            .entry(key)
            .or_insert_with(|| name.to_owned())
            .clone()
    }

    fn canonical_tag(&self, name: &str) -> String {
        self.tags
            .get(&name.to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| name.to_owned())
    }

    fn next_public_ip(&mut self) -> Ipv4Addr {
        if let Some(range) = &self.options.public_range {
            let (first, last) = (u32::from(*range.start()), u32::from(*range.end()));
            let n = self.next_ip;
            self.next_ip += 1;
            let size = last.saturating_sub(first) + 1;
            return Ipv4Addr::from(first + n % size);
        }
        // Documentation ranges only (RFC 5737): nothing real answers there.
        let nets = [[203, 0, 113], [198, 51, 100], [192, 0, 2]];
        let n = self.next_ip;
        self.next_ip += 1;
        let net = nets[(n / 253) as usize % nets.len()];
        Ipv4Addr::new(net[0], net[1], net[2], (n % 253) as u8 + 2)
    }

    fn next_private_ip(&mut self, vpc_id: &str) -> Ipv4Addr {
        let range = self
            .vpcs
            .get(vpc_id)
            .and_then(|v| Ipv4Cidr::parse(&v.ip_range).ok());
        let n = self.vpc_hosts.entry(vpc_id.to_owned()).or_insert(0);
        *n += 1;
        match range {
            Some(r) => Ipv4Addr::from(u32::from(r.network()) + 1 + *n),
            None => Ipv4Addr::new(10, 0, 0, 2),
        }
    }

    fn insert_droplet(
        &mut self,
        name: &str,
        kind: Kind<'_>,
        tags: Vec<String>,
        vpc: &str,
        user_data: Option<String>,
        ssh_keys: Vec<String>,
    ) -> u64 {
        let Kind {
            region,
            size,
            image,
        } = kind;
        let id = self.next_id;
        self.next_id += 1;
        let public = self.next_public_ip();
        let private = self.next_private_ip(vpc);
        self.droplets.insert(
            id,
            FakeDroplet {
                id,
                name: name.to_owned(),
                region: region.to_owned(),
                size: size.to_owned(),
                image: image.to_owned(),
                tags,
                vpc_uuid: vpc.to_owned(),
                user_data,
                created_at: SystemTime::now(),
                public_ipv4: public,
                private_ipv4: private,
                powered_off: false,
                ssh_keys,
            },
        );
        id
    }

    fn status_of(&self, d: &FakeDroplet, now: SystemTime) -> &'static str {
        if self.options.stuck_names.contains(&d.name) {
            return "new";
        }
        if now.duration_since(d.created_at).unwrap_or_default() < self.options.boot_delay {
            return "new";
        }
        if d.powered_off { "off" } else { "active" }
    }

    fn region_json(&self, slug: &str) -> Value {
        let (name, available) = REGIONS
            .iter()
            .find(|r| r.0 == slug)
            .map_or((slug, false), |r| (r.1, r.2));
        json!({
            "name": name,
            "slug": slug,
            "features": ["backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"],
            "available": available,
            "sizes": if available { SIZES.iter().map(|s| s.0).collect::<Vec<_>>() } else { Vec::new() },
        })
    }

    fn size_json(&self, slug: &str) -> Value {
        let (memory, vcpus, disk, price) = SIZES
            .iter()
            .find(|s| s.0 == slug)
            .map_or((1024, 1, 25, 6.0), |s| (s.1, s.2, s.3, s.4));
        json!({
            "slug": slug,
            "memory": memory,
            "vcpus": vcpus,
            "disk": disk,
            "transfer": 4.0,
            "price_monthly": price,
            "price_hourly": price / 744.0,
            "regions": REGIONS.iter().filter(|r| r.2).map(|r| r.0).collect::<Vec<_>>(),
            "available": true,
            "description": "Basic",
        })
    }

    fn image_json(&self, slug: &str) -> Value {
        let (id, slug, dist, name) = IMAGES
            .iter()
            .find(|i| i.1 == slug)
            .copied()
            .unwrap_or(IMAGES[0]);
        json!({
            "id": id,
            "name": name,
            "type": "base",
            "distribution": dist,
            "slug": slug,
            "public": true,
            "regions": REGIONS.iter().filter(|r| r.2).map(|r| r.0).collect::<Vec<_>>(),
            "created_at": "2025-06-10T12:00:00Z",
            "min_disk_size": 15,
            "size_gigabytes": 2.5,
            "description": format!("{dist} {name}"),
            "tags": [],
            "status": "available",
        })
    }

    fn droplet_json(&self, d: &FakeDroplet, now: SystemTime) -> Value {
        let status = self.status_of(d, now);
        let (memory, vcpus, disk) = SIZES
            .iter()
            .find(|s| s.0 == d.size)
            .map_or((1024, 1, 25), |s| (s.1, s.2, s.3));
        // Addresses are assigned while the droplet boots; the API shows
        // them once it is up.
        let v4 = if status == "new" {
            json!([])
        } else {
            let prefix = self
                .vpcs
                .get(&d.vpc_uuid)
                .and_then(|v| Ipv4Cidr::parse(&v.ip_range).ok())
                .map_or(20, |r| r.prefix);
            let public = d.public_ipv4.octets();
            json!([
                {
                    "ip_address": d.public_ipv4.to_string(),
                    "netmask": "255.255.255.0",
                    "gateway": Ipv4Addr::new(public[0], public[1], public[2], 1).to_string(),
                    "type": "public",
                },
                {
                    "ip_address": d.private_ipv4.to_string(),
                    "netmask": netmask(prefix).to_string(),
                    "type": "private",
                },
            ])
        };
        let image = d.image.as_str();
        json!({
            "id": d.id,
            "name": d.name,
            "memory": memory,
            "vcpus": vcpus,
            "disk": disk,
            "disk_info": [{ "type": "local", "size": { "amount": disk, "unit": "gib" } }],
            "locked": false,
            "status": status,
            "kernel": null,
            "created_at": rfc3339(d.created_at),
            "features": ["monitoring", "private_networking"],
            "backup_ids": [],
            "next_backup_window": null,
            "snapshot_ids": [],
            "image": self.image_json(image),
            "volume_ids": [],
            "size": self.size_json(&d.size),
            "size_slug": d.size,
            "networks": { "v4": v4, "v6": [] },
            "region": self.region_json(&d.region),
            "tags": d.tags,
            "vpc_uuid": d.vpc_uuid,
        })
    }

    fn vpc_json(&self, v: &FakeVpc) -> Value {
        json!({
            "id": v.id,
            "urn": format!("do:vpc:{}", v.id),
            "name": v.name,
            "description": v.description,
            "region": v.region,
            "ip_range": v.ip_range,
            "default": v.default,
            "created_at": rfc3339(v.created_at),
        })
    }

    fn firewall_json(&self, f: &FakeFirewall) -> Value {
        json!({
            "id": f.id,
            "name": f.name,
            "status": "succeeded",
            "created_at": rfc3339(f.created_at),
            "pending_changes": [],
            "inbound_rules": f.inbound_rules,
            "outbound_rules": f.outbound_rules,
            "droplet_ids": f.droplet_ids,
            "tags": f.tags,
        })
    }

    fn tag_json(&self, name: &str) -> Value {
        let count = self
            .droplets
            .values()
            .filter(|d| d.tags.iter().any(|t| t.eq_ignore_ascii_case(name)))
            .count();
        let mut droplets = json!({ "count": count });
        let mut resources = json!({ "count": count });
        if let Some(last) = self
            .droplets
            .values()
            .rev()
            .find(|d| d.tags.iter().any(|t| t.eq_ignore_ascii_case(name)))
        {
            let uri = format!("{}/v2/droplets/{}", self.base, last.id);
            droplets["last_tagged_uri"] = json!(uri);
            resources["last_tagged_uri"] = json!(uri);
        }
        resources["droplets"] = droplets;
        json!({ "name": name, "resources": resources })
    }

    fn action_json(&mut self, kind: &str, droplet: &FakeDroplet) -> Value {
        let id = self.next_action;
        self.next_action += 1;
        json!({
            "id": id,
            "status": "in-progress",
            "type": kind,
            "started_at": rfc3339(SystemTime::now()),
            "completed_at": null,
            "resource_id": droplet.id,
            "resource_type": "droplet",
            "region": self.region_json(&droplet.region),
            "region_slug": droplet.region,
        })
    }

    /// A list answer: `key` → this page, `meta.total`, and `links.pages`
    /// only when there is more than one page.
    fn page(&self, path: &str, query: &[(String, String)], key: &str, items: Vec<Value>) -> Value {
        let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
        let per_page = get("per_page")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(20)
            .clamp(1, 200);
        let page = get("page")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let total = items.len();
        let last = total.div_ceil(per_page).max(1);
        let slice: Vec<Value> = items
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect();
        let mut body = json!({ key: slice, "meta": { "total": total } });
        if last > 1 {
            let link = |p: usize| {
                let mut ser = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in query {
                    if k != "page" && k != "per_page" {
                        ser.append_pair(k, v);
                    }
                }
                ser.append_pair("page", &p.to_string());
                ser.append_pair("per_page", &per_page.to_string());
                format!("{}{}?{}", self.base, path, ser.finish())
            };
            let mut pages = serde_json::Map::new();
            if page > 1 {
                pages.insert("first".into(), json!(link(1)));
                pages.insert("prev".into(), json!(link(page - 1)));
            }
            if page < last {
                pages.insert("next".into(), json!(link(page + 1)));
                pages.insert("last".into(), json!(link(last)));
            }
            body["links"] = json!({ "pages": pages });
        }
        body
    }

    fn default_vpc(&mut self, region: &str) -> String {
        if let Some(v) = self.vpcs.values().find(|v| v.default && v.region == region) {
            return v.id.clone();
        }
        let id = self.uuid();
        let range = self.allocate_range();
        self.vpcs.insert(
            id.clone(),
            FakeVpc {
                id: id.clone(),
                name: format!("default-{region}"),
                description: String::new(),
                region: region.to_owned(),
                ip_range: range,
                default: true,
                created_at: SystemTime::now(),
            },
        );
        id
    }

    fn allocate_range(&mut self) -> String {
        loop {
            self.next_range = self.next_range.wrapping_add(1);
            let candidate = format!("10.{}.0.0/20", 10 + u32::from(self.next_range) % 80);
            if !self.vpcs.values().any(|v| v.ip_range == candidate) {
                return candidate;
            }
        }
    }

    fn apply(
        &mut self,
        op: &str,
        params: &HashMap<String, String>,
        query: &[(String, String)],
        body: &[u8],
        now: SystemTime,
    ) -> (u16, Option<Value>) {
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return error(400, "bad_request", &format!("invalid JSON: {e}")),
            }
        };
        let q = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
        let param_id = |k: &str| params.get(k).and_then(|v| v.parse::<u64>().ok());
        match op {
            "account_get" => (
                200,
                Some(json!({ "account": {
                    "droplet_limit": self.options.droplet_limit,
                    "floating_ip_limit": 3,
                    "email": "apiary@example.com",
                    "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
                    "email_verified": true,
                    "status": self.options.account_status.0,
                    "status_message": self.options.account_status.1,
                }})),
            ),
            "sshKeys_list" => {
                let items = self
                    .ssh_keys
                    .iter()
                    .map(|k| json!({ "id": k.id, "fingerprint": k.fingerprint, "public_key": k.public_key, "name": k.name }))
                    .collect();
                (
                    200,
                    Some(self.page("/v2/account/keys", query, "ssh_keys", items)),
                )
            }
            "sshKeys_create" => {
                let (Some(name), Some(key)) = (
                    body.get("name").and_then(Value::as_str),
                    body.get("public_key").and_then(Value::as_str),
                ) else {
                    return error(
                        422,
                        "unprocessable_entity",
                        "name and public_key are required",
                    );
                };
                let id = 512_000 + self.ssh_keys.len() as u64;
                let digest: Vec<u8> = key
                    .bytes()
                    .fold([0u8; 16], |mut acc, b| {
                        for (i, x) in acc.iter_mut().enumerate() {
                            *x = x.wrapping_mul(31).wrapping_add(b ^ i as u8);
                        }
                        acc
                    })
                    .to_vec();
                let fingerprint = digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                let rec = SshKeyRec {
                    id,
                    fingerprint,
                    public_key: key.to_owned(),
                    name: name.to_owned(),
                };
                self.ssh_keys.push(rec.clone());
                (
                    201,
                    Some(
                        json!({ "ssh_key": { "id": rec.id, "fingerprint": rec.fingerprint, "public_key": rec.public_key, "name": rec.name } }),
                    ),
                )
            }
            "droplets_list" => {
                let tag = q("tag_name");
                let name = q("name");
                if tag.is_some() && (name.is_some() || q("type").is_some()) {
                    return error(
                        400,
                        "bad_request",
                        "tag_name cannot be combined with name or type",
                    );
                }
                if q("type").as_deref() == Some("gpus") {
                    return (
                        200,
                        Some(self.page("/v2/droplets", query, "droplets", Vec::new())),
                    );
                }
                let items = self
                    .droplets
                    .values()
                    .filter(|d| {
                        tag.as_deref()
                            .is_none_or(|t| d.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
                    })
                    .filter(|d| {
                        name.as_deref()
                            .is_none_or(|n| d.name.eq_ignore_ascii_case(n))
                    })
                    .map(|d| self.droplet_json(d, now))
                    .collect();
                (
                    200,
                    Some(self.page("/v2/droplets", query, "droplets", items)),
                )
            }
            "droplets_create" => self.create_droplets(&body, now),
            "droplets_destroy_byTag" => {
                let Some(tag) = q("tag_name") else {
                    return error(400, "bad_request", "tag_name is required");
                };
                if !self.tags.contains_key(&tag.to_ascii_lowercase()) {
                    return not_found();
                }
                let gone: Vec<u64> = self
                    .droplets
                    .values()
                    .filter(|d| d.tags.iter().any(|t| t.eq_ignore_ascii_case(&tag)))
                    .map(|d| d.id)
                    .collect();
                for id in &gone {
                    self.remove_droplet(*id);
                }
                (204, None)
            }
            "droplets_get" => match param_id("droplet_id").and_then(|id| self.droplets.get(&id)) {
                Some(d) => (200, Some(json!({ "droplet": self.droplet_json(d, now) }))),
                None => not_found(),
            },
            "droplets_destroy" => match param_id("droplet_id") {
                Some(id) if self.droplets.contains_key(&id) => {
                    self.remove_droplet(id);
                    (204, None)
                }
                _ => not_found(),
            },
            "dropletActions_post" => {
                let Some(id) = param_id("droplet_id") else {
                    return not_found();
                };
                let kind = body
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let Some(d) = self.droplets.get_mut(&id) else {
                    return not_found();
                };
                match kind.as_str() {
                    "power_off" | "shutdown" => d.powered_off = true,
                    "power_on" | "reboot" | "power_cycle" => d.powered_off = false,
                    "" => return error(422, "unprocessable_entity", "type is required"),
                    _ => {}
                }
                let d = d.clone();
                let action = self.action_json(&kind, &d);
                (201, Some(json!({ "action": action })))
            }
            "tags_create" => {
                let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
                if !is_tag_name(name) {
                    return (
                        400,
                        Some(json!({
                            "error": "invalid tag name",
                            "messages": null,
                            "root_causes": [format!("tag name {name:?} contains invalid characters")],
                        })),
                    );
                }
                let canonical = self.ensure_tag(name);
                (201, Some(json!({ "tag": self.tag_json(&canonical) })))
            }
            "tags_assign_resources" => {
                let tag = params.get("tag_id").cloned().unwrap_or_default();
                let Some(canonical) = self.tags.get(&tag.to_ascii_lowercase()).cloned() else {
                    return not_found();
                };
                let resources = body
                    .get("resources")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for r in resources {
                    if r.get("resource_type").and_then(Value::as_str) != Some("droplet") {
                        continue;
                    }
                    let id = r
                        .get("resource_id")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<u64>().ok());
                    match id.and_then(|id| self.droplets.get_mut(&id)) {
                        Some(d) => {
                            if !d.tags.iter().any(|t| t.eq_ignore_ascii_case(&canonical)) {
                                d.tags.push(canonical.clone());
                            }
                        }
                        None => {
                            return not_found();
                        }
                    }
                }
                (204, None)
            }
            "vpcs_list" => {
                let items = self.vpcs.values().map(|v| self.vpc_json(v)).collect();
                (200, Some(self.page("/v2/vpcs", query, "vpcs", items)))
            }
            "vpcs_create" => self.create_vpc(&body),
            "vpcs_get" => match params.get("vpc_id").and_then(|id| self.vpcs.get(id)) {
                Some(v) => (200, Some(json!({ "vpc": self.vpc_json(v) }))),
                None => not_found(),
            },
            "delete_vpc" => {
                let id = params.get("vpc_id").cloned().unwrap_or_default();
                let Some(v) = self.vpcs.get(&id) else {
                    return not_found();
                };
                if v.default {
                    return error(
                        403,
                        "forbidden",
                        "The default VPC of a region cannot be deleted.",
                    );
                }
                if self.droplets.values().any(|d| d.vpc_uuid == id) {
                    return error(
                        403,
                        "forbidden",
                        "This VPC still has members and cannot be deleted.",
                    );
                }
                self.vpcs.remove(&id);
                (204, None)
            }
            "firewalls_list" => {
                let items = self
                    .firewalls
                    .values()
                    .map(|f| self.firewall_json(f))
                    .collect();
                (
                    200,
                    Some(self.page("/v2/firewalls", query, "firewalls", items)),
                )
            }
            "firewalls_create" => self.create_firewall(&body),
            "firewalls_get" => match params
                .get("firewall_id")
                .and_then(|id| self.firewalls.get(id))
            {
                Some(f) => (200, Some(json!({ "firewall": self.firewall_json(f) }))),
                None => not_found(),
            },
            "firewalls_assign_droplets" => {
                let id = params.get("firewall_id").cloned().unwrap_or_default();
                let ids: Vec<u64> = body
                    .get("droplet_ids")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                if ids.iter().any(|i| !self.droplets.contains_key(i)) {
                    return error(422, "unprocessable_entity", "Some droplets do not exist.");
                }
                let Some(f) = self.firewalls.get_mut(&id) else {
                    return not_found();
                };
                for i in ids {
                    if !f.droplet_ids.contains(&i) {
                        f.droplet_ids.push(i);
                    }
                }
                (204, None)
            }
            "firewalls_add_tags" => {
                let id = params.get("firewall_id").cloned().unwrap_or_default();
                let tags: Vec<String> = body
                    .get("tags")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(t) = tags
                    .iter()
                    .find(|t| !self.tags.contains_key(&t.to_ascii_lowercase()))
                {
                    return error(
                        422,
                        "unprocessable_entity",
                        &format!("tag {t} does not exist"),
                    );
                }
                let canon: Vec<String> = tags.iter().map(|t| self.canonical_tag(t)).collect();
                let Some(f) = self.firewalls.get_mut(&id) else {
                    return not_found();
                };
                for t in canon {
                    if !f.tags.contains(&t) {
                        f.tags.push(t);
                    }
                }
                (204, None)
            }
            "sshKeys_delete" => {
                let key = params
                    .get("ssh_key_identifier")
                    .cloned()
                    .unwrap_or_default();
                let before = self.ssh_keys.len();
                self.ssh_keys
                    .retain(|k| k.id.to_string() != key && k.fingerprint != key);
                if self.ssh_keys.len() < before {
                    (204, None)
                } else {
                    not_found()
                }
            }
            "delete_firewall" => {
                let id = params.get("firewall_id").cloned().unwrap_or_default();
                if self.firewalls.remove(&id).is_some() {
                    (204, None)
                } else {
                    not_found()
                }
            }
            // A public image by slug or id (private ones only by id upstream;
            // the fake has public ones only).
            "images_get" => {
                let key = params.get("image_id").cloned().unwrap_or_default();
                let found = IMAGES
                    .iter()
                    .find(|i| i.1 == key || key.parse::<u64>().ok() == Some(i.0));
                match found {
                    Some(i) => (200, Some(json!({ "image": self.image_json(i.1) }))),
                    None => not_found(),
                }
            }
            "regions_list" => {
                let items = REGIONS.iter().map(|r| self.region_json(r.0)).collect();
                (200, Some(self.page("/v2/regions", query, "regions", items)))
            }
            "sizes_list" => {
                let items = SIZES.iter().map(|s| self.size_json(s.0)).collect();
                (200, Some(self.page("/v2/sizes", query, "sizes", items)))
            }
            other => error(
                501,
                "not_implemented",
                &format!("the fake does not implement {other}"),
            ),
        }
    }

    fn remove_droplet(&mut self, id: u64) {
        self.droplets.remove(&id);
        for f in self.firewalls.values_mut() {
            f.droplet_ids.retain(|d| *d != id);
        }
    }

    fn create_droplets(&mut self, body: &Value, now: SystemTime) -> (u16, Option<Value>) {
        let unprocessable = |m: &str| error(422, "unprocessable_entity", m);
        let names: Vec<String> = match (body.get("name"), body.get("names")) {
            (Some(Value::String(n)), None) => vec![n.clone()],
            (None, Some(Value::Array(ns))) => ns
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => return unprocessable("Send either name or names."),
        };
        let multi = body.get("names").is_some();
        if names.is_empty() || names.len() > 10 {
            return unprocessable("You can create between 1 and 10 droplets per request.");
        }
        if let Some(bad) = names.iter().find(|n| !is_droplet_name(n)) {
            return unprocessable(&format!("Name {bad:?} is invalid."));
        }
        let region = body
            .get("region")
            .and_then(Value::as_str)
            .unwrap_or("nyc3")
            .to_owned();
        if !REGIONS.iter().any(|r| r.0 == region && r.2) {
            return unprocessable("Region is not available.");
        }
        let size = body
            .get("size")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !SIZES.iter().any(|s| s.0 == size) {
            return unprocessable("Size is not available in this region.");
        }
        let image = match body.get("image") {
            Some(Value::String(s)) => IMAGES.iter().find(|i| i.1 == s),
            Some(Value::Number(n)) => IMAGES.iter().find(|i| Some(i.0) == n.as_u64()),
            _ => None,
        };
        let Some(&(_, image, _, _)) = image else {
            return unprocessable("You specified an invalid image for Droplet creation.");
        };
        let mut ssh_keys = Vec::new();
        if let Some(keys) = body.get("ssh_keys").and_then(Value::as_array) {
            for k in keys {
                let found = match k {
                    Value::Number(n) => self.ssh_keys.iter().find(|x| Some(x.id) == n.as_u64()),
                    Value::String(s) => self.ssh_keys.iter().find(|x| x.fingerprint == *s),
                    _ => None,
                };
                let Some(found) = found else {
                    return unprocessable(&format!("SSH key {k} not found."));
                };
                ssh_keys.push(found.public_key.clone());
            }
        }
        let user_data = body
            .get("user_data")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if user_data.as_ref().is_some_and(|u| u.len() > 64 * 1024) {
            return unprocessable("user_data may not exceed 64 KiB.");
        }
        let tags: Vec<String> = body
            .get("tags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(bad) = tags.iter().find(|t| !is_tag_name(t)) {
            return unprocessable(&format!("Tag {bad:?} is invalid."));
        }
        let vpc = match body.get("vpc_uuid").and_then(Value::as_str) {
            Some(id) => match self.vpcs.get(id) {
                Some(v) if v.region == region => id.to_owned(),
                Some(_) => return unprocessable("The VPC is in another region."),
                None => return unprocessable("VPC not found."),
            },
            None => self.default_vpc(&region),
        };
        if self.droplets.len() as u64 + names.len() as u64 > self.options.droplet_limit {
            return unprocessable("Creating these droplets would exceed your droplet limit.");
        }
        // Tags named in a create are created if new.
        let tags: Vec<String> = tags.iter().map(|t| self.ensure_tag(t)).collect();
        let mut created = Vec::new();
        for name in &names {
            let kind = Kind {
                region: &region,
                size: &size,
                image,
            };
            let id = self.insert_droplet(
                name,
                kind,
                tags.clone(),
                &vpc,
                user_data.clone(),
                ssh_keys.clone(),
            );
            created.push(id);
        }
        let droplets: Vec<Value> = created
            .iter()
            .filter_map(|id| self.droplets.get(id).map(|d| self.droplet_json(d, now)))
            .collect();
        let actions: Vec<Value> = created
            .iter()
            .map(|_| {
                let id = self.next_action;
                self.next_action += 1;
                json!({ "id": id, "rel": "create", "href": format!("{}/v2/actions/{id}", self.base) })
            })
            .collect();
        let body = if multi {
            json!({ "droplets": droplets, "links": { "actions": actions } })
        } else {
            json!({ "droplet": droplets.first(), "links": { "actions": actions } })
        };
        (202, Some(body))
    }

    fn create_vpc(&mut self, body: &Value) -> (u16, Option<Value>) {
        let unprocessable = |m: &str| error(422, "unprocessable_entity", m);
        let name = body
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let region = body
            .get("region")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() || !REGIONS.iter().any(|r| r.0 == region && r.2) {
            return unprocessable("name and an available region are required");
        }
        if self.vpcs.values().any(|v| v.name == name) {
            return unprocessable("A VPC with this name already exists.");
        }
        let range = match body.get("ip_range").and_then(Value::as_str) {
            Some(r) => {
                let Ok(cidr) = Ipv4Cidr::parse(r) else {
                    return unprocessable("ip_range is not a valid CIDR");
                };
                let overlaps = self.vpcs.values().any(|v| {
                    Ipv4Cidr::parse(&v.ip_range)
                        .is_ok_and(|o| o.contains(cidr.network()) || cidr.contains(o.network()))
                });
                if overlaps {
                    return unprocessable("ip_range overlaps another VPC of the account");
                }
                r.to_owned()
            }
            None => self.allocate_range(),
        };
        let id = self.uuid();
        let v = FakeVpc {
            id: id.clone(),
            name,
            description: body
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            region,
            ip_range: range,
            default: false,
            created_at: SystemTime::now(),
        };
        let out = json!({ "vpc": self.vpc_json(&v) });
        self.vpcs.insert(id, v);
        (201, Some(out))
    }

    fn create_firewall(&mut self, body: &Value) -> (u16, Option<Value>) {
        let unprocessable = |m: &str| error(422, "unprocessable_entity", m);
        let name = body
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            return unprocessable("name is required");
        }
        let inbound = body.get("inbound_rules").cloned().unwrap_or(Value::Null);
        let outbound = body.get("outbound_rules").cloned().unwrap_or(Value::Null);
        if inbound.is_null() && outbound.is_null() {
            return unprocessable("at least one rule is required");
        }
        let tags: Vec<String> = body
            .get("tags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(t) = tags
            .iter()
            .find(|t| !self.tags.contains_key(&t.to_ascii_lowercase()))
        {
            return unprocessable(&format!("tag {t} does not exist"));
        }
        let droplet_ids: Vec<u64> = body
            .get("droplet_ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let id = self.uuid();
        let f = FakeFirewall {
            id: id.clone(),
            name,
            inbound_rules: if inbound.is_null() {
                json!([])
            } else {
                inbound
            },
            outbound_rules: if outbound.is_null() {
                json!([])
            } else {
                outbound
            },
            tags: tags.iter().map(|t| self.canonical_tag(t)).collect(),
            droplet_ids,
            created_at: SystemTime::now(),
        };
        let out = json!({ "firewall": self.firewall_json(&f) });
        self.firewalls.insert(id, f);
        (202, Some(out))
    }
}

/// A clock for tests and benchmarks: real `now`, sleeps shortened by
/// `divisor`, every requested sleep recorded (so a test can check that the
/// client asked to wait as long as the API said).
#[derive(Debug)]
pub struct ScaledClock {
    divisor: u32,
    requested: Mutex<Vec<Duration>>,
}

impl ScaledClock {
    pub fn new(divisor: u32) -> Arc<ScaledClock> {
        Arc::new(ScaledClock {
            divisor: divisor.max(1),
            requested: Mutex::new(Vec::new()),
        })
    }

    /// Every sleep asked for, at full length.
    pub fn requested(&self) -> Vec<Duration> {
        lock(&self.requested).clone()
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        lock(&self.requested).push(duration);
        Box::pin(tokio::time::sleep(duration / self.divisor))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn droplet_names_follow_the_spec_pattern() {
        assert!(is_droplet_name("node-1.example.com"));
        assert!(!is_droplet_name("node-"));
        assert!(!is_droplet_name("node_1"));
    }
}
