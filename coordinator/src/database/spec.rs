//! What the database runs: one abstraction, one implementation per kind
//! ([`Etcd`], [`Rethinkdb`]), turning `[database]` and the hosts into Swarm
//! service definitions ([`ServiceSpec`]) that the first manager's agent
//! creates. The control (`crate::database`) never looks at the kind: it asks
//! the [`Flavor`] for the specs, whether the servers must start in order,
//! how to judge a server's health and how members join and leave.
//!
//! Server `N` (1-based) runs on the N-th host in [`placement_order`] (by
//! name, numbers compared as numbers) as service `<kind>-N`,
//! whose name is also its hostname and its DNS name on the overlay
//! (`--endpoint-mode dnsrr`: no virtual IP, no ingress, nothing published),
//! pinned with `node.hostname==<host>`, memory-limited, with the named volume
//! `<prefix>-N-data`.

use std::time::Duration;

use apiary_api::database::{
    AdminCredentials, DatabaseKind, EndpointMode, PeerTls, ServerHealth, ServiceSpec,
};

use super::membership::{EtcdMembership, Membership, RethinkdbMembership};

use crate::config::DatabaseConfig;

/// How long Swarm waits before restarting a dead server (etcd rejoins from its
/// volume; a short delay keeps a 3/4 state short).
pub const RESTART_DELAY: Duration = Duration::from_secs(10);

/// The config with the server count of `ctl scale database=N` applied
/// (`scaled`, kept in the coordinator's store), if one was set.
pub fn effective(cfg: &DatabaseConfig, scaled: Option<usize>) -> DatabaseConfig {
    let mut c = cfg.clone();
    if let Some(n) = scaled {
        c.servers = Some(n);
    }
    c
}

/// One database server: its service name and host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub index: usize,
    pub name: String,
    pub host: String,
}

/// What differs between databases.
pub trait Flavor: Send + Sync {
    fn kind(&self) -> DatabaseKind;
    /// Where the data volume is mounted.
    fn data_dir(&self) -> &'static str;
    /// The command line of `server` among `all` (the initial members).
    fn command(
        &self,
        cfg: &DatabaseConfig,
        cluster: &str,
        server: &Server,
        all: &[Server],
    ) -> Vec<String>;
    fn env(&self, _cfg: &DatabaseConfig) -> Vec<String> {
        Vec::new()
    }
    /// Whether a server needs certificates from the cluster CA (mounted
    /// as secrets): for its peers, and for etcd's clients too.
    fn needs_certificates(&self, cfg: &DatabaseConfig) -> bool {
        cfg.peer_tls
    }
    /// The command line of a server added to a running cluster, given what
    /// the membership API answered; `None` when this kind cannot scale yet.
    fn join_command(
        &self,
        _cfg: &DatabaseConfig,
        _cluster: &str,
        _server: &Server,
        _initial_cluster: &str,
        _generation: u64,
    ) -> Option<Vec<String>> {
        None
    }
    /// Whether server 1 must be healthy before the others are created
    /// (RethinkDB's joins), instead of all at once (etcd's static bootstrap).
    fn first_before_others(&self) -> bool;
    /// The port `ctl tunnel database:admin` opens: the one an operator
    /// points a browser or an HTTP client at.
    fn admin_port(&self, cfg: &DatabaseConfig) -> u16;
    /// Why a server that answers healthy still does not count (it has not
    /// joined the others), given how many servers there are.
    fn not_joined(&self, _health: &ServerHealth, _expected: usize) -> Option<String> {
        None
    }
    /// How servers join and leave a running cluster.
    fn membership(&self) -> &'static dyn Membership;
    /// The administrator apiary makes a password for when `[database]
    /// auth` is on (RethinkDB's `admin`); `None`: clients authenticate
    /// another way, or not at all.
    fn admin_user(&self) -> Option<&'static str> {
        None
    }
    /// The name `server` has among the database's own members (what its
    /// health answers name the leader by).
    fn member_name(&self, server: &Server) -> String {
        server.name.clone()
    }
}

pub struct Etcd;
pub struct Rethinkdb;

/// Runs `argv` once every name in `names` resolves on the overlay, or after
/// 20 s at the latest. Database containers have no upstream resolver (see
/// `apiary_api::database::NO_UPSTREAM_DNS`), so a peer whose task has not
/// started yet fails to resolve at once, and this loop sees it appear within
/// 100 ms. Without it etcd starts, cannot resolve a peer, and either waits
/// out its retries or exits (and Swarm restarts it after its delay); with
/// it, every peer is there when etcd starts, and it elects a leader in about
/// one election timeout. The deadline keeps a server whose peer's host is
/// gone from waiting forever: etcd then starts anyway, as it would without.
fn wait_for_names(names: &[&str], argv: Vec<String>) -> Vec<String> {
    let script = format!(
        "i=0; for peer in {}; do until nslookup \"$peer\" >/dev/null 2>&1 || [ $i -ge 200 ]; do i=$((i+1)); sleep 0.1; done; done; exec \"$@\"",
        names.join(" ")
    );
    [
        "/bin/sh".to_string(),
        "-c".into(),
        script,
        "wait-for-peers".into(),
    ]
    .into_iter()
    .chain(argv)
    .collect()
}

/// The scheme of peer URLs: https when `[database] peer_tls`.
fn peer_scheme(cfg: &DatabaseConfig) -> &'static str {
    if cfg.peer_tls { "https" } else { "http" }
}

/// The URL a server's peers reach it at.
pub fn peer_url(cfg: &DatabaseConfig, server: &Server) -> String {
    format!("{}://{}:{}", peer_scheme(cfg), server.name, cfg.peer_port)
}

/// The names a server's peer certificate is valid for: its service name
/// and `tasks.<name>`, which Docker's DNS answers with the task's own
/// address. etcd checks a dialing peer's certificate against the address it
/// dials from, and with a virtual IP the service name resolves to the VIP,
/// not to that address.
pub fn peer_names(server_name: &str) -> Vec<String> {
    // 127.0.0.1 too: etcd's clients inside the server's container (its
    // health checks and `etcdctl`) and through `ctl tunnel` (which enters
    // the container) reach it at its loopback.
    vec![
        server_name.to_string(),
        format!("tasks.{server_name}"),
        "127.0.0.1".to_string(),
    ]
}

/// The scheme of etcd's client URLs: https (client certificates checked)
/// when `[database] auth`.
fn client_scheme(cfg: &DatabaseConfig) -> &'static str {
    if cfg.auth { "https" } else { "http" }
}

impl Flavor for Etcd {
    fn kind(&self) -> DatabaseKind {
        DatabaseKind::Etcd
    }
    fn data_dir(&self) -> &'static str {
        "/var/lib/etcd"
    }
    /// Static bootstrap: every initial member listed in `--initial-cluster`
    /// (the flags verified in the lab baselines).
    fn command(
        &self,
        cfg: &DatabaseConfig,
        cluster: &str,
        server: &Server,
        all: &[Server],
    ) -> Vec<String> {
        let (c, p) = (cfg.client_port, cfg.peer_port);
        let initial = all
            .iter()
            .map(|s| format!("{}={}", s.name, peer_url(cfg, s)))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = vec![
            "/usr/bin/etcd".to_string(),
            "--name".into(),
            server.name.clone(),
            "--data-dir".into(),
            self.data_dir().into(),
            "--listen-peer-urls".into(),
            format!("{}://0.0.0.0:{p}", peer_scheme(cfg)),
            "--listen-client-urls".into(),
            format!("{}://0.0.0.0:{c}", client_scheme(cfg)),
            "--advertise-client-urls".into(),
            format!("{}://{}:{c}", client_scheme(cfg), server.name),
            "--initial-advertise-peer-urls".into(),
            peer_url(cfg, server),
            "--initial-cluster".into(),
            initial,
            "--initial-cluster-token".into(),
            format!("{cluster}-etcd"),
            "--initial-cluster-state".into(),
            "new".into(),
            // With every peer resolvable at start (`wait_for_names`), the
            // members start within a second of each other; etcd's default
            // fast-forwards each one's first election timer, so they all
            // campaign at once, split the vote and wait out a full
            // randomized timeout (1-2 s) to try again. Without the advance
            // the first timer to run out wins, as Raft intends.
            "--initial-election-tick-advance=false".into(),
        ];
        if cfg.peer_tls {
            // Peers present certificates from the cluster CA, and only
            // database peer certificates are admitted (an agent's, from the
            // same CA, has another name).
            etcd.extend([
                "--peer-cert-file".into(),
                PeerTls::CERT_FILE.into(),
                "--peer-key-file".into(),
                PeerTls::KEY_FILE.into(),
                "--peer-trusted-ca-file".into(),
                PeerTls::CA_FILE.into(),
                "--peer-client-cert-auth".into(),
                "--peer-cert-allowed-cn".into(),
                apiary_certs::DATABASE_PEER_CN.into(),
            ]);
        }
        if cfg.auth {
            // Clients present a certificate from the cluster CA: a
            // container on the overlay without one gets nothing (`ctl
            // database credentials` writes one for an operator).
            etcd.extend([
                "--cert-file".into(),
                PeerTls::CERT_FILE.into(),
                "--key-file".into(),
                PeerTls::KEY_FILE.into(),
                "--trusted-ca-file".into(),
                PeerTls::CA_FILE.into(),
                "--client-cert-auth".into(),
            ]);
        }
        wait_for_names(
            &all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            etcd,
        )
    }
    /// `etcdctl` run in the container (apiary's health checks and
    /// membership changes, an operator's `docker exec`) finds the local
    /// server, and with `auth` its client certificate, from here.
    fn env(&self, cfg: &DatabaseConfig) -> Vec<String> {
        let mut env = vec![
            "ETCDCTL_API=3".to_string(),
            format!(
                "ETCDCTL_ENDPOINTS={}://127.0.0.1:{}",
                client_scheme(cfg),
                cfg.client_port
            ),
        ];
        if cfg.auth {
            env.extend([
                format!("ETCDCTL_CACERT={}", PeerTls::CA_FILE),
                format!("ETCDCTL_CERT={}", PeerTls::CERT_FILE),
                format!("ETCDCTL_KEY={}", PeerTls::KEY_FILE),
            ]);
        }
        env
    }
    fn needs_certificates(&self, cfg: &DatabaseConfig) -> bool {
        cfg.peer_tls || cfg.auth
    }
    /// A member added with `member add`: the cluster as that call printed
    /// it, state `existing`, and a fresh data directory on the volume (a
    /// volume left by an earlier, removed member holds a stale identity).
    fn join_command(
        &self,
        cfg: &DatabaseConfig,
        cluster: &str,
        server: &Server,
        initial_cluster: &str,
        generation: u64,
    ) -> Option<Vec<String>> {
        let mut cmd = self.command(cfg, cluster, server, std::slice::from_ref(server));
        for (flag, value) in [
            ("--initial-cluster", initial_cluster.to_string()),
            ("--initial-cluster-state", "existing".to_string()),
            ("--data-dir", format!("{}/m{generation}", self.data_dir())),
        ] {
            if let Some(i) = cmd.iter().position(|a| a == flag) {
                cmd[i + 1] = value;
            }
        }
        Some(cmd)
    }
    fn first_before_others(&self) -> bool {
        false
    }
    /// etcd serves its HTTP endpoints (`/health`, `/version`, `/metrics`)
    /// on the client port.
    fn admin_port(&self, cfg: &DatabaseConfig) -> u16 {
        cfg.client_port
    }
    fn membership(&self) -> &'static dyn Membership {
        &EtcdMembership
    }
}

impl Flavor for Rethinkdb {
    fn kind(&self) -> DatabaseKind {
        DatabaseKind::Rethinkdb
    }
    fn data_dir(&self) -> &'static str {
        "/data"
    }
    /// The first server binds everything (on the overlay only: nothing is
    /// published); the others join it by name.
    fn command(
        &self,
        cfg: &DatabaseConfig,
        _cluster: &str,
        server: &Server,
        all: &[Server],
    ) -> Vec<String> {
        let mut cmd: Vec<String> = vec![
            "rethinkdb".into(),
            "--bind".into(),
            "all".into(),
            // The web UI has no login of its own: only inside the container
            // (`ctl tunnel database:admin` connects there), never on the
            // overlay.
            "--bind-http".into(),
            "127.0.0.1".into(),
            "--server-name".into(),
            self.member_name(server),
            "--canonical-address".into(),
            server.name.clone(),
            "--directory".into(),
            format!("{}/rethinkdb_data", self.data_dir()),
            "--driver-port".into(),
            cfg.client_port.to_string(),
            "--cluster-port".into(),
            cfg.peer_port.to_string(),
        ];
        if cfg.peer_tls {
            // Cluster connections over TLS, both ends' certificates checked
            // against the cluster CA.
            cmd.extend([
                "--cluster-tls-key".into(),
                PeerTls::KEY_FILE.into(),
                "--cluster-tls-cert".into(),
                PeerTls::CERT_FILE.into(),
                "--cluster-tls-ca".into(),
                PeerTls::CA_FILE.into(),
            ]);
        }
        if cfg.auth {
            // `initial-password=...` from a mounted secret: a password on
            // the command line would show in `ps` and `docker inspect`.
            cmd.extend(["--config-file".into(), AdminCredentials::CONFIG_FILE.into()]);
        }
        if server.index > 1
            && let Some(first) = all.first()
        {
            cmd.push("--join".into());
            cmd.push(format!("{}:{}", first.name, cfg.peer_port));
        }
        cmd
    }
    fn first_before_others(&self) -> bool {
        true
    }
    /// RethinkDB's web UI (`--http-port`, default 8080).
    fn admin_port(&self, _cfg: &DatabaseConfig) -> u16 {
        8080
    }
    /// A RethinkDB server answers its own queries whether or not it joined
    /// the others: it counts only when its `server_status` lists a majority
    /// of them (a server that never joined sees itself alone; with one
    /// server down, the others still see each other and count).
    fn not_joined(&self, h: &ServerHealth, expected: usize) -> Option<String> {
        // No members at all: not this server's own answer (a health carried
        // over while its agent restarts), nothing to judge by.
        let seen = h.members.len();
        (h.healthy && seen > 0 && seen * 2 <= expected && expected > 1).then(|| {
            format!(
                "sees {} of {expected} servers in server_status (not joined to the others?)",
                h.members.len()
            )
        })
    }
    fn membership(&self) -> &'static dyn Membership {
        &RethinkdbMembership
    }
    fn admin_user(&self) -> Option<&'static str> {
        Some("admin")
    }
    /// `--server-name`: RethinkDB's names allow no '-'.
    fn member_name(&self, server: &Server) -> String {
        server.name.replace('-', "_")
    }
}

pub fn flavor(kind: DatabaseKind) -> Box<dyn Flavor> {
    match kind {
        DatabaseKind::Etcd => Box::new(Etcd),
        DatabaseKind::Rethinkdb => Box::new(Rethinkdb),
    }
}

/// The order hosts take servers in: by name, runs of digits compared as
/// numbers (`workerbee-9` before `workerbee-10`). So the highest-numbered
/// hosts, the ones a scale-down of the provider's `hosts = N` removes, hold
/// the last servers: the only ones that can leave without moving the others
/// (see `cluster::drain_node`). Plain string order would put `workerbee-10`
/// among the first servers.
pub fn placement_order(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn runs(s: &str) -> impl Iterator<Item = &str> {
        let mut rest = s;
        std::iter::from_fn(move || {
            let first = rest.chars().next()?;
            let digit = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digit)
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(end);
            rest = tail;
            Some(run)
        })
    }
    let mut x = runs(a);
    let mut y = runs(b);
    loop {
        let order = match (x.next(), y.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q))
                if p.as_bytes()[0].is_ascii_digit() && q.as_bytes()[0].is_ascii_digit() =>
            {
                let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                p.len().cmp(&q.len()).then_with(|| p.cmp(q))
            }
            (Some(p), Some(q)) => p.cmp(q),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
}

/// The servers: one per host (hosts in [`placement_order`]), up to `servers`.
pub fn servers(cfg: &DatabaseConfig, hosts: &[String]) -> Vec<Server> {
    let mut hosts = hosts.to_vec();
    hosts.sort_by(|a, b| placement_order(a, b));
    let n = cfg.servers.unwrap_or(hosts.len()).min(hosts.len());
    hosts
        .into_iter()
        .take(n)
        .enumerate()
        .map(|(i, host)| Server {
            index: i + 1,
            name: format!("{}-{}", cfg.kind.as_str(), i + 1),
            host,
        })
        .collect()
}

/// The service definitions of `servers` on `network`; `peer_tls` gives
/// each server's certificate when `[database] peer_tls` is on.
pub fn specs(
    cfg: &DatabaseConfig,
    cluster: &str,
    network: &str,
    all: &[Server],
    endpoint_mode: EndpointMode,
    peer_tls: &dyn Fn(&Server) -> Option<PeerTls>,
    admin: Option<&AdminCredentials>,
) -> Vec<ServiceSpec> {
    let f = flavor(cfg.kind);
    all.iter()
        .map(|s| {
            spec_with(
                cfg,
                network,
                s,
                f.command(cfg, cluster, s, all),
                endpoint_mode,
                peer_tls(s),
                admin,
            )
        })
        .collect()
}

/// The service definition of one server with `command`.
pub fn spec_with(
    cfg: &DatabaseConfig,
    network: &str,
    s: &Server,
    command: Vec<String>,
    endpoint_mode: EndpointMode,
    peer_tls: Option<PeerTls>,
    admin: Option<&AdminCredentials>,
) -> ServiceSpec {
    let f = flavor(cfg.kind);
    ServiceSpec {
        name: s.name.clone(),
        kind: cfg.kind,
        image: cfg.image.clone(),
        node: s.host.clone(),
        network: network.to_string(),
        command,
        env: f.env(cfg),
        memory_bytes: cfg.memory_bytes,
        volume: format!("{}-{}-data", cfg.volume_prefix, s.index),
        data_dir: f.data_dir().to_string(),
        restart_delay: RESTART_DELAY,
        endpoint_mode,
        peer_tls: peer_tls.filter(|_| f.needs_certificates(cfg)),
        admin: admin
            .filter(|_| cfg.auth && f.admin_user().is_some())
            .cloned(),
    }
}

/// `ETCD_INITIAL_CLUSTER="..."` from `etcdctl member add`'s output.
pub fn etcd_initial_cluster(member_add_output: &str) -> Option<String> {
    member_add_output.lines().find_map(|l| {
        l.trim()
            .strip_prefix("ETCD_INITIAL_CLUSTER=")
            .map(|v| v.trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_puts_the_highest_numbered_hosts_last() {
        let mut hosts: Vec<String> = std::iter::once("queenbee".to_string())
            .chain((1..=11).map(|i| format!("workerbee-{i}")))
            .collect();
        hosts.reverse();
        hosts.sort_by(|a, b| placement_order(a, b));
        assert_eq!(hosts[0], "queenbee");
        assert_eq!(hosts[9], "workerbee-9");
        assert_eq!(hosts[10], "workerbee-10");
        assert_eq!(hosts[11], "workerbee-11");
        let servers = servers(&cfg(DatabaseKind::Etcd), &hosts);
        assert_eq!(
            servers.last().map(|s| s.host.as_str()),
            Some("workerbee-11")
        );
        assert_eq!(servers[2].host, "workerbee-2");
        // Names without numbers keep string order; leading zeros are equal
        // numbers, told apart only as a last resort (never Equal for
        // different names).
        assert!(placement_order("a", "b").is_lt());
        assert!(placement_order("node-2", "node-02").is_ne());
        assert!(placement_order("node-2b", "node-10a").is_lt());
        assert!(placement_order("node", "node-1").is_lt());
    }

    fn cfg(kind: DatabaseKind) -> DatabaseConfig {
        let (image, c, p) = match kind {
            DatabaseKind::Etcd => ("lab/etcd:1", 2379, 2380),
            DatabaseKind::Rethinkdb => ("rethinkdb:2.4", 28015, 29015),
        };
        DatabaseConfig {
            kind,
            image: image.into(),
            servers: None,
            memory: "450m".into(),
            memory_bytes: 450 << 20,
            volume_prefix: kind.as_str().into(),
            client_port: c,
            peer_port: p,
            peer_tls: true,
            auth: true,
            spread_tables: false,
            image_archive: None,
        }
    }

    fn specs_of(
        c: &DatabaseConfig,
        all: &[Server],
        admin: Option<&AdminCredentials>,
    ) -> Vec<ServiceSpec> {
        specs(c, "bees", "apiary", all, EndpointMode::Dnsrr, &tls, admin)
    }

    /// A stand-in certificate per server, named after it.
    fn tls(s: &Server) -> Option<PeerTls> {
        Some(PeerTls {
            ca_pem: "ca".into(),
            cert_pem: format!("cert of {}", s.name),
            key_pem: format!("key of {}", s.name),
        })
    }

    #[test]
    fn without_peer_tls_peers_talk_http_and_no_certificate_is_mounted() {
        for kind in [DatabaseKind::Etcd, DatabaseKind::Rethinkdb] {
            let mut c = cfg(kind);
            c.peer_tls = false;
            c.auth = false;
            let all = servers(&c, &hosts());
            for s in specs(&c, "bees", "apiary", &all, EndpointMode::Dnsrr, &tls, None) {
                let cmd = s.command.join(" ");
                assert!(!cmd.contains("https") && !cmd.contains("tls"), "{cmd}");
                assert!(!cmd.contains("/run/secrets/apiary-peer"), "{cmd}");
                // No certificate, so the agent mounts no secret.
                assert_eq!(s.peer_tls, None);
            }
            assert!(peer_url(&c, &all[0]).starts_with("http://"));
        }
    }

    #[test]
    fn etcd_clients_present_a_certificate_from_the_cluster_ca_unless_auth_is_off() {
        let mut c = cfg(DatabaseKind::Etcd);
        c.peer_tls = false;
        let all = servers(&c, &hosts());
        let s = &specs(&c, "bees", "apiary", &all, EndpointMode::Dnsrr, &tls, None)[1];
        let argv = &s.command[4..];
        for (flag, value) in [
            ("--listen-client-urls", "https://0.0.0.0:2379"),
            ("--advertise-client-urls", "https://etcd-2:2379"),
            ("--cert-file", PeerTls::CERT_FILE),
            ("--key-file", PeerTls::KEY_FILE),
            ("--trusted-ca-file", PeerTls::CA_FILE),
        ] {
            let at = argv.iter().position(|a| a == flag).expect(flag);
            assert_eq!(argv[at + 1], value, "{flag}");
        }
        assert!(argv.iter().any(|a| a == "--client-cert-auth"));
        // Peers still in plain text (peer_tls off), but the certificate is
        // mounted for the clients' side.
        assert!(peer_url(&c, &all[1]).starts_with("http://"));
        assert!(s.peer_tls.is_some());
        // etcdctl in the container finds the server and its certificate.
        for var in [
            "ETCDCTL_ENDPOINTS=https://127.0.0.1:2379".to_string(),
            format!("ETCDCTL_CERT={}", PeerTls::CERT_FILE),
            format!("ETCDCTL_KEY={}", PeerTls::KEY_FILE),
            format!("ETCDCTL_CACERT={}", PeerTls::CA_FILE),
        ] {
            assert!(s.env.contains(&var), "{var} in {:?}", s.env);
        }
        c.auth = false;
        let open = &specs(&c, "bees", "apiary", &all, EndpointMode::Dnsrr, &tls, None)[1];
        assert!(
            open.env
                .contains(&"ETCDCTL_ENDPOINTS=http://127.0.0.1:2379".to_string())
        );
        assert!(!open.command.join(" ").contains("client-cert-auth"));
        // Its certificate is valid at the loopback the in-container clients use.
        assert!(peer_names("etcd-2").contains(&"127.0.0.1".to_string()));
    }

    fn hosts() -> Vec<String> {
        ["workerbee-2", "queenbee", "workerbee-1", "workerbee-3"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn etcd_is_one_pinned_server_per_host_with_a_static_initial_cluster() {
        let c = cfg(DatabaseKind::Etcd);
        let all = servers(&c, &hosts());
        let specs = specs(&c, "bees", "apiary", &all, EndpointMode::Dnsrr, &tls, None);
        assert_eq!(specs.len(), 4);
        let nodes: Vec<&str> = specs.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(
            nodes,
            ["queenbee", "workerbee-1", "workerbee-2", "workerbee-3"]
        );
        let s = &specs[1];
        assert_eq!(s.name, "etcd-2");
        assert_eq!(s.volume, "etcd-2-data");
        assert_eq!(s.memory_bytes, 450 << 20);
        assert_eq!(s.network, "apiary");
        // etcd starts once every peer's name resolves (or 20 s have passed).
        assert_eq!(s.command[..2], ["/bin/sh", "-c"]);
        assert!(
            s.command[2].contains("for peer in etcd-1 etcd-2 etcd-3 etcd-4;")
                && s.command[2].contains("nslookup")
                && s.command[2].ends_with("exec \"$@\""),
            "{}",
            s.command[2]
        );
        let cmd = s.command[4..].join(" ");
        assert!(
            cmd.starts_with("/usr/bin/etcd --name etcd-2 --data-dir /var/lib/etcd"),
            "{cmd}"
        );
        assert!(
            cmd.contains("--advertise-client-urls https://etcd-2:2379"),
            "{cmd}"
        );
        assert!(
            cmd.contains("--initial-advertise-peer-urls https://etcd-2:2380"),
            "{cmd}"
        );
        assert!(
            cmd.contains("--listen-peer-urls https://0.0.0.0:2380 "),
            "{cmd}"
        );
        assert!(cmd.contains("--initial-cluster etcd-1=https://etcd-1:2380,etcd-2=https://etcd-2:2380,etcd-3=https://etcd-3:2380,etcd-4=https://etcd-4:2380 "), "{cmd}");
        // Peers over TLS with the cluster CA's database peer certificates
        // only, mounted from the spec's secrets.
        let argv = &s.command[4..];
        for (flag, value) in [
            ("--peer-cert-file", PeerTls::CERT_FILE),
            ("--peer-key-file", PeerTls::KEY_FILE),
            ("--peer-trusted-ca-file", PeerTls::CA_FILE),
            ("--peer-cert-allowed-cn", apiary_certs::DATABASE_PEER_CN),
        ] {
            let at = argv.iter().position(|a| a == flag).expect(flag);
            assert_eq!(argv[at + 1], value, "{flag}");
        }
        assert!(argv.iter().any(|a| a == "--peer-client-cert-auth"), "{cmd}");
        assert_eq!(
            s.peer_tls.as_ref().map(|t| t.cert_pem.as_str()),
            Some("cert of etcd-2")
        );
        assert!(
            cmd.contains("--initial-cluster-token bees-etcd --initial-cluster-state new --initial-election-tick-advance=false"),
            "{cmd}"
        );
        // On the overlay only: dnsrr, pinned, named (a spec has no field for
        // published ports; the agent's Docker translation is tested there).
        assert_eq!(s.endpoint_mode, EndpointMode::Dnsrr);
        assert_eq!(s.node, "workerbee-1");
        assert_eq!(s.name, "etcd-2");
        assert!(!flavor(DatabaseKind::Etcd).first_before_others());
    }

    #[test]
    fn rethinkdb_first_binds_all_and_the_others_join_it_by_name() {
        let mut c = cfg(DatabaseKind::Rethinkdb);
        c.servers = Some(3);
        let all = servers(&c, &hosts());
        assert_eq!(all.len(), 3);
        let admin = AdminCredentials {
            user: "admin".into(),
            password: "pw-7c1".into(),
        };
        let specs = specs(
            &c,
            "bees",
            "apiary",
            &all,
            EndpointMode::Dnsrr,
            &tls,
            Some(&admin),
        );
        let first = specs[0].command.join(" ");
        assert!(
            first.starts_with(
                "rethinkdb --bind all --bind-http 127.0.0.1 --server-name rethinkdb_1"
            ),
            "{first}"
        );
        for s in &specs {
            // The password reaches a server only as its mounted secret.
            assert_eq!(s.admin.as_ref(), Some(&admin));
            let cmd = s.command.join(" ");
            assert!(
                cmd.contains(&format!("--config-file {}", AdminCredentials::CONFIG_FILE)),
                "{cmd}"
            );
            assert!(!cmd.contains("pw-7c1") && !s.env.join(" ").contains("pw-7c1"));
        }
        let mut open = c.clone();
        open.auth = false;
        let unauthenticated = specs_of(&open, &all, Some(&admin));
        assert!(
            unauthenticated
                .iter()
                .all(|s| s.admin.is_none() && !s.command.join(" ").contains("--config-file"))
        );
        let etcd = cfg(DatabaseKind::Etcd);
        assert!(
            specs_of(&etcd, &servers(&etcd, &hosts()), Some(&admin))
                .iter()
                .all(|s| s.admin.is_none()),
            "etcd has no admin password"
        );
        assert!(!first.contains("--join"), "{first}");
        for s in &specs[1..] {
            let cmd = s.command.join(" ");
            assert!(cmd.contains(" --join rethinkdb-1:29015"), "{cmd}");
            assert!(
                cmd.contains(&format!("--canonical-address {} ", s.name)),
                "{cmd}"
            );
        }
        for s in &specs {
            let cmd = s.command.join(" ");
            assert!(
                cmd.contains(&format!(
                    "--cluster-tls-key {} --cluster-tls-cert {} --cluster-tls-ca {}",
                    PeerTls::KEY_FILE,
                    PeerTls::CERT_FILE,
                    PeerTls::CA_FILE
                )),
                "{cmd}"
            );
            assert!(s.peer_tls.is_some());
            assert_eq!(s.image, "rethinkdb:2.4");
            assert_eq!(s.memory_bytes, 450 << 20);
            assert_eq!(s.data_dir, "/data");
            assert_eq!(s.endpoint_mode, EndpointMode::Dnsrr);
        }
        assert!(flavor(DatabaseKind::Rethinkdb).first_before_others());
    }

    #[test]
    fn an_added_etcd_member_joins_the_existing_cluster_in_a_fresh_data_dir() {
        let out = "Member ced000fda4d05edf added to cluster 8c4281cc65c7b112\n\nETCD_NAME=\"etcd-4\"\nETCD_INITIAL_CLUSTER=\"etcd-1=http://etcd-1:2380,etcd-4=http://etcd-4:2380\"\nETCD_INITIAL_CLUSTER_STATE=\"existing\"\n";
        let ic = etcd_initial_cluster(out).expect("initial cluster");
        assert_eq!(ic, "etcd-1=http://etcd-1:2380,etcd-4=http://etcd-4:2380");
        let c = cfg(DatabaseKind::Etcd);
        let s = &servers(&c, &hosts())[3];
        let cmd = Etcd
            .join_command(&c, "bees", s, &ic, 7)
            .expect("etcd scales")
            .join(" ");
        assert!(cmd.contains("--data-dir /var/lib/etcd/m7 "), "{cmd}");
        assert!(
            cmd.contains("--initial-cluster etcd-1=http://etcd-1:2380,etcd-4=http://etcd-4:2380 "),
            "{cmd}"
        );
        assert!(cmd.contains("--initial-cluster-state existing "), "{cmd}");
        assert!(Rethinkdb.join_command(&c, "bees", s, &ic, 7).is_none());
    }
}
