//! DigitalOcean's API answers: the model types directly, and the real
//! client (paging, retries, rate limits, error bodies) against a loopback
//! server that answers what the fuzzer says.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use apiary_digitalocean::model::{
    Account, Action, DropletActionType, DropletCreate, Firewall, FirewallCreate, ImageValue,
    Region, Size, SshKey, Tag, Vpc,
};
use apiary_digitalocean::{
    Client, Clock, ClusterTarget, DigitalOceanConfig, DigitalOceanSpec, Droplet, HostName,
    HostSpec, RetryPolicy, TOKEN_VAR, TagName, plan,
};
use serde_json::Value;

use super::{Target, block_on, split_all};

const DO_DICT: &[&str] = &[
    "\"droplets\"",
    "\"droplet\"",
    "\"vpcs\"",
    "\"vpc\"",
    "\"firewalls\"",
    "\"firewall\"",
    "\"ssh_keys\"",
    "\"regions\"",
    "\"sizes\"",
    "\"account\"",
    "\"links\"",
    "\"pages\"",
    "\"next\"",
    "\"meta\"",
    "\"total\"",
    "\"id\"",
    "\"name\"",
    "\"status\"",
    "\"active\"",
    "\"networks\"",
    "\"v4\"",
    "\"ip_address\"",
    "\"type\"",
    "\"public\"",
    "\"private\"",
    "\"tags\"",
    "\"ip_range\"",
    "\"message\"",
    "\"request_id\"",
    "null",
];

pub const DO_MODELS: Target = Target {
    name: "do_models",
    covers: "digitalocean/src/model.rs: every answer type (Droplet, Vpc, Firewall, SshKey, Region, Size, Account, Tag, Action) as the client decodes a page's key; Droplet::public_ipv4/private_ipv4/has_tag; digitalocean/src/reconcile.rs: plan",
    run: do_models,
    dict: DO_DICT,
    max_len: 1 << 20,
    test_mutations: 1500,
    known: None,
};

/// The desired hosts of the fuzzed cluster.
fn desired() -> Vec<HostSpec> {
    ["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"]
        .iter()
        .filter_map(|n| HostName::parse(n).ok())
        .map(|name| HostSpec {
            name,
            user_data: Some("#cloud-config\n{}\n".into()),
        })
        .collect()
}

/// The value under `key`, decoded as the client decodes it.
fn under<T: serde::de::DeserializeOwned>(v: &Value, key: &str) -> Option<T> {
    serde_json::from_value(v.get(key)?.clone()).ok()
}

/// An answer body decoded as each type the client reads, and a listing's
/// droplets planned against the desired hosts: every droplet is adopted,
/// a duplicate or surplus, and every host adopted or created, once.
fn do_models(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Some(droplets) = under::<Vec<Droplet>>(&v, "droplets") {
        for d in &droplets {
            let _ = (d.public_ipv4(), d.private_ipv4(), d.has_tag("apiary-fuzz"));
        }
        let hosts = desired();
        let p = plan(&hosts, &droplets);
        assert_eq!(
            p.adopt.len() + p.duplicates.len() + p.surplus.len(),
            droplets.len(),
            "a droplet is lost or counted twice"
        );
        let created: usize = p.create.iter().map(|b| b.names.len()).sum();
        assert_eq!(
            p.adopt.len().min(hosts.len()) + created,
            hosts.len(),
            "a host is neither adopted nor created"
        );
    }
    let _ = under::<Droplet>(&v, "droplet");
    let _ = under::<Vec<Vpc>>(&v, "vpcs");
    let _ = under::<Vpc>(&v, "vpc");
    let _ = under::<Vec<Firewall>>(&v, "firewalls");
    let _ = under::<Firewall>(&v, "firewall");
    let _ = under::<Vec<SshKey>>(&v, "ssh_keys");
    let _ = under::<SshKey>(&v, "ssh_key");
    let _ = under::<Vec<Region>>(&v, "regions");
    let _ = under::<Vec<Size>>(&v, "sizes");
    let _ = under::<Account>(&v, "account");
    let _ = under::<Tag>(&v, "tag");
    let _ = under::<Action>(&v, "action");
}

pub const DO_CLIENT: Target = Target {
    name: "do_client",
    covers: "digitalocean/src/client.rs: Client (send_inner's retries and rate limits, list_all's paging, decode, field, api_error_body) for every operation; digitalocean/src/reconcile.rs: preflight (with images_get and the unfiltered droplets_list), reconcile, ensure_vpc, remove, teardown",
    run: do_client,
    dict: DO_DICT,
    max_len: 1 << 20,
    test_mutations: 400,
    known: None,
};

/// One HTTP answer of the fake API.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Headers an answer may carry (the ones the client reads).
const HEADERS: [&str; 5] = [
    "retry-after",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-limit",
    "x-request-id",
];

/// `#STATUS name:value ...` on a first line sets the status and headers
/// (default 200, none); the rest is the body.
fn answer(part: &[u8]) -> Answer {
    let mut a = Answer {
        status: 200,
        headers: Vec::new(),
        body: part.to_vec(),
    };
    let Some(head) = part.strip_prefix(b"#") else {
        return a;
    };
    let (line, body) = super::split_once(head, b"\n");
    a.body = body.to_vec();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    if let Some(code) = words.next().and_then(|c| c.parse::<u16>().ok()) {
        // Informational answers are not final; hyper waits for another.
        a.status = code.clamp(200, 599);
    }
    for w in words {
        if let Some((k, v)) = w.split_once(':')
            && HEADERS.contains(&k.to_ascii_lowercase().as_str())
            && v.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            a.headers.push((k.to_string(), v.to_string()));
        }
    }
    a
}

/// The fake API's state: what it answers next.
struct Fake {
    answers: Mutex<VecDeque<Answer>>,
}

fn fake() -> &'static (SocketAddr, Arc<Fake>) {
    static FAKE: OnceLock<(SocketAddr, Arc<Fake>)> = OnceLock::new();
    FAKE.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("apiary-fuzz: no loopback listener: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("apiary-fuzz: listener address: {e}"));
        let fake = Arc::new(Fake {
            answers: Mutex::new(VecDeque::new()),
        });
        let f = fake.clone();
        std::thread::Builder::new()
            .name("fake-digitalocean".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let f = f.clone();
                    let _ = std::thread::Builder::new()
                        .name("fake-digitalocean-conn".into())
                        .spawn(move || serve(conn, &f));
                }
            })
            .unwrap_or_else(|e| panic!("apiary-fuzz: no server thread: {e}"));
        (addr, fake)
    })
}

/// Answers HTTP/1.1 requests on one connection, each with the next
/// answer (404 when there is none left).
fn serve(conn: TcpStream, fake: &Fake) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" && !first {
                break;
            }
            first = false;
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let a = fake
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .unwrap_or(Answer {
                status: 404,
                headers: Vec::new(),
                body: br#"{"id":"not_found","message":"The resource you requested could not be found."}"#
                    .to_vec(),
            });
        let no_body = a.status == 204 || a.status == 304;
        let mut head = format!(
            "HTTP/1.1 {} Fuzz\r\ncontent-type: application/json\r\n",
            a.status
        );
        if !no_body {
            head.push_str(&format!("content-length: {}\r\n", a.body.len()));
        }
        for (k, v) in &a.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !no_body {
            bytes.extend_from_slice(&a.body);
        }
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// Time that passes only when the client sleeps, from a fixed start: a
/// run is the same whenever it happens, and waits cost nothing.
struct VirtualClock {
    slept: Mutex<Duration>,
}

const EPOCH_NOW: Duration = Duration::from_secs(1_700_000_000);

impl Clock for VirtualClock {
    fn now(&self) -> SystemTime {
        let slept = *self.slept.lock().unwrap_or_else(|p| p.into_inner());
        SystemTime::UNIX_EPOCH + EPOCH_NOW + slept.min(Duration::from_secs(1 << 40))
    }
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut slept = self.slept.lock().unwrap_or_else(|p| p.into_inner());
        *slept = slept.saturating_add(d);
        Box::pin(std::future::ready(()))
    }
}

/// The fuzzed cluster's provider config, pointing at the fake.
fn config() -> &'static DigitalOceanConfig {
    static CONFIG: OnceLock<DigitalOceanConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let (addr, _) = fake();
        let mut spec = DigitalOceanSpec::new();
        spec.firewall = true;
        spec.boot_timeout = Duration::from_secs(10);
        spec.poll_interval = Duration::from_secs(1);
        let env: HashMap<&str, String> = [
            (TOKEN_VAR, "dop_v1_fuzz0123456789abcdef".to_string()),
            ("DIGITALOCEAN_API_URL", format!("http://{addr}/")),
        ]
        .into_iter()
        .collect();
        spec.validate(|k| env.get(k).cloned())
            .unwrap_or_else(|e| panic!("apiary-fuzz: DigitalOcean config: {e}"))
    })
}

/// Byte 0 picks the operation; the rest are the answers, in order,
/// separated by `---` lines (`{BASE}` in them is the fake's URL).
fn do_client(data: &[u8]) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let (addr, f) = fake();
    // `{BASE}` stands for the fake's URL (pagination links name it).
    let base = format!("http://{addr}/");
    *f.answers.lock().unwrap_or_else(|p| p.into_inner()) = split_all(rest, b"\n---\n")
        .into_iter()
        .map(|part| {
            let mut a = answer(part);
            a.body = split_all(&a.body, b"{BASE}").join(base.as_bytes());
            a
        })
        .collect();
    let policy = RetryPolicy {
        max_attempts: 3,
        max_rate_limit_retries: 3,
        request_timeout: Duration::from_secs(5),
        ..RetryPolicy::default()
    };
    let clock = Arc::new(VirtualClock {
        slept: Mutex::new(Duration::ZERO),
    });
    let Ok(client) = Client::with_policy(config(), policy, clock) else {
        return;
    };
    block_on(call(&client, op));
}

async fn call(client: &Client, op: u8) {
    let tag = TagName::parse("apiary-fuzz").unwrap_or_else(|e| panic!("tag: {e}"));
    match op % 28 {
        0 => {
            if let Ok(droplets) = client.list_droplets_by_tag("apiary-fuzz").await {
                let ids: HashSet<u64> = droplets.iter().map(|d| d.id).collect();
                assert_eq!(ids.len(), droplets.len(), "a listing holds a droplet twice");
                let _ = plan(&desired(), &droplets);
            }
        }
        1 => drop(client.list_vpcs().await),
        2 => drop(client.list_firewalls().await),
        3 => drop(client.list_ssh_keys().await),
        4 => drop(client.list_regions().await),
        5 => drop(client.list_sizes().await),
        6 => drop(client.get_droplet(7).await),
        7 => drop(client.get_vpc("vpc-1").await),
        8 => drop(client.get_firewall("fw-1").await),
        9 => drop(client.account().await),
        10 | 11 => drop(client.create_droplets(&create(op % 2 == 1)).await),
        12 => drop(
            client
                .create_vpc("apiary-fuzz", "nyc3", "d", Some("10.10.0.0/20"))
                .await,
        ),
        13 => drop(client.create_firewall(&firewall()).await),
        14 => drop(client.create_tag("apiary-fuzz").await),
        15 => drop(client.tag_droplets("apiary-fuzz", &[1, 2]).await),
        16 => drop(client.delete_droplet(7).await),
        17 => drop(client.droplet_action(7, DropletActionType::Reboot).await),
        18 => drop(client.create_ssh_key("k", "ssh-ed25519 AAAA").await),
        19 => {
            let hosts: Vec<HostName> = HostName::parse("workerbee-1").into_iter().collect();
            let target = apiary_digitalocean::PreflightTarget {
                droplet: &config().droplet,
                tag: &tag,
                hosts: &hosts,
            };
            drop(apiary_digitalocean::preflight(client, &target).await)
        }
        20 => drop(apiary_digitalocean::reconcile(client, &target(&tag)).await),
        21 => drop(apiary_digitalocean::teardown(client, &tag).await),
        22 => drop(apiary_digitalocean::ensure_vpc(client, &target(&tag)).await),
        23 => {
            let gone: Vec<HostName> = HostName::parse("workerbee-3").into_iter().collect();
            drop(apiary_digitalocean::remove(client, &tag, &gone).await)
        }
        24 => drop(client.delete_vpc("vpc-1").await),
        25 => drop(client.delete_firewall("fw-1").await),
        26 => drop(
            client
                .add_firewall_tags("fw-1", &["apiary-fuzz".into()])
                .await,
        ),
        _ => drop(client.delete_droplets_by_tag("apiary-fuzz").await),
    }
}

fn target(tag: &TagName) -> ClusterTarget {
    ClusterTarget::new(config(), tag.clone(), desired())
}

fn create(many: bool) -> DropletCreate {
    DropletCreate {
        name: (!many).then(|| "queenbee".into()),
        names: many.then(|| vec!["workerbee-1".into(), "workerbee-2".into()]),
        region: "nyc3".into(),
        size: "s-2vcpu-4gb".into(),
        image: ImageValue::Slug("debian-12-x64".into()),
        ssh_keys: Vec::new(),
        tags: vec!["apiary-fuzz".into()],
        user_data: None,
        vpc_uuid: None,
    }
}

fn firewall() -> FirewallCreate {
    FirewallCreate {
        name: "apiary-fuzz-fw".into(),
        inbound_rules: Vec::new(),
        outbound_rules: Vec::new(),
        tags: vec!["apiary-fuzz".into()],
    }
}
