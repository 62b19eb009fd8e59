//! The clustered database's servers as Swarm services, and their health read
//! over the database's own protocol, from the agent on each host.
//!
//! The coordinator decides *what* runs (one [`ServiceSpec`] per server, made by
//! its database abstraction); this module only turns a spec into a Swarm
//! service through the manager's local engine, idempotently, and answers how
//! the server on this host is doing.
//!
//! Health (etcd): `etcdctl` run with `docker exec` inside this host's own etcd
//! container, against `127.0.0.1:2379`. Why: the agent is not on the overlay
//! (services use `dnsrr` names that only resolve inside it), the client port is
//! never published, and the image carries etcdctl, which speaks etcd's API
//! (gRPC) — so the check is etcd's own answer (`endpoint health` is a quorum
//! read, `endpoint status` gives the leader, `member list` the members), not
//! `docker ps`. A missing or stopped container is "not running", at once.
//!
//! Failures between two health reads: [`watch`] follows the engine's events
//! for the database's containers and reports each stop and start at once.
//!
//! ## Limitations
//! - RethinkDB health speaks its wire protocol ([`rethinkdb`]: V1_0
//!   handshake, SCRAM-SHA-256 as `admin` with the default empty password, a
//!   `server_status` query) on a socket made in the server container's network
//!   namespace; tested against the published handshake, RFC 7677's vectors
//!   and, in the lab, a real RethinkDB 2.4.4.
//! - An existing service with another spec is adopted as it is (its spec
//!   label tells the coordinator it differs); it is not updated in place.

pub mod rethinkdb;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountType, NetworkAttachmentConfig,
    SecretSpec, ServiceSpec as DockerServiceSpec, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecDnsConfig, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets,
    TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::ListContainersOptions;

/// Label on every service apiary makes for the database.
pub const DATABASE_LABEL: &str = "io.apiary.database";
/// Label on a server's secrets: the service they belong to, so that
/// removing the service removes them too.
pub const SERVER_LABEL: &str = "io.apiary.database.server";
/// Label carrying a digest of the [`ServiceSpec`] a service was made from.
pub const SPEC_LABEL: &str = "io.apiary.spec";

/// The contract types (specs, health, peer TLS) live in `apiary-api`.
pub use apiary_api::database::{
    AdminCredentials, DatabaseKind, EndpointMode, MemberView, NO_UPSTREAM_DNS, PeerTls,
    ServerHealth, ServiceSpec, ServiceState, ShardConfig, TableConfig,
};

/// The Swarm service definition: `--endpoint-mode` from
/// [`EndpointMode`] (no ingress, no published port), `--constraint node.hostname==<node>`,
/// `--hostname <name>`, the volume, the memory limit, restart on any exit,
/// and `secrets` ((name, id) of the [`PeerTls`] secrets, which Swarm
/// needs by id: made first by [`Database::ensure_service`]).
pub fn to_docker(spec: &ServiceSpec, secrets: &[(String, String)]) -> DockerServiceSpec {
    let mounted = spec.secrets();
    let secret_refs = (!mounted.is_empty()).then(|| {
        mounted
            .into_iter()
            .map(|secret| TaskSpecContainerSpecSecrets {
                file: Some(TaskSpecContainerSpecFile {
                    name: Some(PeerTls::file_name(secret.file).to_string()),
                    uid: Some("0".into()),
                    gid: Some("0".into()),
                    mode: Some(0o400),
                }),
                secret_id: secrets
                    .iter()
                    .find(|(n, _)| *n == secret.name)
                    .map(|(_, id)| id.clone()),
                secret_name: Some(secret.name),
            })
            .collect::<Vec<_>>()
    });
    let labels = HashMap::from([
        (DATABASE_LABEL.to_string(), spec.kind.as_str().to_string()),
        (SPEC_LABEL.to_string(), spec.digest()),
        ("io.apiary.managed".to_string(), "true".to_string()),
    ]);
    DockerServiceSpec {
        name: Some(spec.name.clone()),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(spec.image.clone()),
                hostname: Some(spec.name.clone()),
                // On the container too (service labels are not): the agent
                // follows the engine's events for these containers (`watch`).
                labels: Some(HashMap::from([(
                    DATABASE_LABEL.to_string(),
                    spec.kind.as_str().to_string(),
                )])),
                // Servers find each other by name on the overlay, which
                // Docker's embedded DNS answers itself; any other name it
                // forwards to this "upstream", where nothing listens, so
                // it fails at once. With Docker's default a peer whose
                // task does not exist yet resolves with an upstream i/o
                // timeout (seconds per attempt while the cluster forms);
                // and the servers never ask a resolver outside the
                // cluster. Start order is the command's business (etcd
                // waits for its peers' names: `wait_for_names` in the
                // coordinator's database module).
                dns_config: Some(TaskSpecContainerSpecDnsConfig {
                    nameservers: Some(vec![NO_UPSTREAM_DNS.to_string()]),
                    ..Default::default()
                }),
                command: Some(spec.command.clone()),
                env: Some(spec.env.clone()),
                secrets: secret_refs,
                mounts: Some(vec![Mount {
                    typ: Some(MountType::VOLUME),
                    source: Some(spec.volume.clone()),
                    target: Some(spec.data_dir.clone()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    memory_bytes: Some(spec.memory_bytes),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(spec.restart_delay.as_nanos() as i64),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(vec![format!("node.hostname=={}", spec.node)]),
                ..Default::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(spec.network.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(match spec.endpoint_mode {
                EndpointMode::Vip => EndpointSpecModeEnum::VIP,
                EndpointMode::Dnsrr => EndpointSpecModeEnum::DNSRR,
            }),
            ports: None,
        }),
        ..Default::default()
    }
}

/// The database work of one agent, on its local engine.
pub struct Database {
    docker: Docker,
    host: String,
}

fn server_message(e: &bollard::errors::Error) -> Option<(u16, &str)> {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => Some((*status_code, message.as_str())),
        _ => None,
    }
}

impl Database {
    pub fn new(docker: Docker, host: &str) -> Self {
        Database {
            docker,
            host: host.to_string(),
        }
    }

    fn err(&self, action: &str, e: bollard::errors::Error) -> String {
        format!("the Docker engine of {} failed to {action}: {e}", self.host)
    }

    /// Creates the service unless one of that name exists (then it is adopted).
    /// Needs a manager.
    pub async fn ensure_service(&self, spec: &ServiceSpec) -> Result<ServiceState, String> {
        match self.docker.inspect_service(&spec.name, None).await {
            Ok(s) => {
                let label = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.labels.as_ref())
                    .and_then(|l| l.get(SPEC_LABEL).cloned())
                    .unwrap_or_default();
                return Ok(ServiceState {
                    name: spec.name.clone(),
                    created: false,
                    matches: label == spec.digest(),
                });
            }
            Err(e) if server_message(&e).is_some_and(|(s, _)| s == 404) => {}
            Err(e) => return Err(self.err("inspect a service", e)),
        }
        let mut secrets = Vec::new();
        for secret in spec.secrets() {
            let id = self
                .ensure_secret(&spec.name, &secret.name, &secret.content)
                .await?;
            secrets.push((secret.name, id));
        }
        self.docker
            .create_service(to_docker(spec, &secrets), None)
            .await
            .map_err(|e| self.err("create a service", e))?;
        Ok(ServiceState {
            name: spec.name.clone(),
            created: true,
            matches: true,
        })
    }

    /// The id of the Swarm secret `name`, made with `content` unless it
    /// exists (names carry a digest of their content, see [`PeerTls`]).
    async fn ensure_secret(
        &self,
        service: &str,
        name: &str,
        content: &str,
    ) -> Result<String, String> {
        use base64::Engine;
        let spec = SecretSpec {
            name: Some(name.to_string()),
            data: Some(base64::engine::general_purpose::STANDARD.encode(content)),
            labels: Some(HashMap::from([
                ("io.apiary.managed".to_string(), "true".to_string()),
                (SERVER_LABEL.to_string(), service.to_string()),
            ])),
            ..Default::default()
        };
        match self.docker.create_secret(spec).await {
            Ok(made) => Ok(made.id),
            Err(e) if server_message(&e).is_some_and(|(s, _)| s == 409) => self
                .docker
                .inspect_secret(name)
                .await
                .map_err(|e| self.err("read a secret", e))?
                .id
                .ok_or_else(|| {
                    format!(
                        "the Docker engine of {} gave secret {name} no id",
                        self.host
                    )
                }),
            Err(e) => Err(self.err("create a secret", e)),
        }
    }

    /// Removes the service and its secrets; false when there was no service.
    pub async fn remove_service(&self, name: &str) -> Result<bool, String> {
        let removed = match self.docker.delete_service(name).await {
            Ok(()) => true,
            Err(e) if server_message(&e).is_some_and(|(s, _)| s == 404) => false,
            Err(e) => return Err(self.err("remove a service", e)),
        };
        let filters =
            HashMap::from([("label".to_string(), vec![format!("{SERVER_LABEL}={name}")])]);
        let secrets = self
            .docker
            .list_secrets(Some(bollard::query_parameters::ListSecretsOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| self.err("list secrets", e))?;
        for id in secrets.into_iter().filter_map(|s| s.id) {
            match self.docker.delete_secret(&id).await {
                Ok(()) => {}
                Err(e) if server_message(&e).is_some_and(|(s, _)| s == 404) => {}
                Err(e) => return Err(self.err("remove a secret", e)),
            }
        }
        Ok(removed)
    }

    /// The running container of `service` on this host, if any.
    async fn local_container(&self, service: &str) -> Result<Option<String>, String> {
        let filters = HashMap::from([
            (
                "label".to_string(),
                vec![format!("com.docker.swarm.service.name={service}")],
            ),
            ("status".to_string(), vec!["running".to_string()]),
        ]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.err("list containers", e))?;
        Ok(list.into_iter().find_map(|c| c.id))
    }

    /// The running container of `service` on this host, or why there is none.
    async fn running_container(&self, service: &str) -> Result<String, String> {
        self.local_container(service)
            .await?
            .ok_or_else(|| format!("no running container of {service} on {}", self.host))
    }

    /// How the server of `service` on this host answers.
    pub async fn health(
        &self,
        kind: DatabaseKind,
        service: &str,
        admin: Option<&AdminCredentials>,
    ) -> ServerHealth {
        let mut h = ServerHealth {
            host: self.host.clone(),
            service: service.to_string(),
            ..Default::default()
        };
        let container = match self.local_container(service).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                h.error = Some(format!(
                    "no running container of {service} on {}",
                    self.host
                ));
                return h;
            }
            Err(e) => {
                h.error = Some(e);
                return h;
            }
        };
        h.running = true;
        match kind {
            DatabaseKind::Etcd => {
                // The three questions at once, each with a short timeout: a
                // forming cluster answers none of them until it has a quorum,
                // and asked one after the other they cost up to 9 s a round,
                // which is how late "healthy" would be seen.
                // The endpoint (and with client TLS the certificate) come
                // from the container's `ETCDCTL_*` environment.
                let script = "E='etcdctl --dial-timeout=1s --command-timeout=2s'; \
                    d=/tmp/apiary-health.$$; \
                    $E endpoint health -w json >$d.h 2>&1 & $E endpoint status -w json >$d.s 2>&1 & \
                    $E member list -w json >$d.m 2>&1 & wait; \
                    cat $d.h; echo '@@'; cat $d.s; echo '@@'; cat $d.m; rm -f $d.h $d.s $d.m";
                let cmd = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
                match self.exec(&container, cmd, Duration::from_secs(12)).await {
                    Ok((_, out)) => parse_etcd(&out, &mut h),
                    Err(e) => h.error = Some(e),
                }
            }
            DatabaseKind::Rethinkdb => {
                if let Err(e) = self.rethinkdb_health(&container, admin, &mut h).await {
                    h.error = Some(e);
                }
            }
        }
        h
    }

    /// A RethinkDB connection, authenticated, to the server in `container`:
    /// made inside the container's network namespace (its driver port is on
    /// the overlay only, which the agent is not on), to 127.0.0.1.
    async fn rethinkdb_connect(
        &self,
        container: &str,
        admin: Option<&AdminCredentials>,
    ) -> Result<tokio::net::TcpStream, String> {
        let pid = self.inspect(container).await?.pid;
        let mut stream = connect_in_netns(pid, 28015, Duration::from_secs(3))
            .await
            .map_err(|e| format!("{e} (in the server's container)"))?;
        let nonce = hex::encode(rand::random::<[u8; 18]>());
        let (user, password) = admin.map_or(("admin", ""), |a| (&a.user, &a.password));
        tokio::time::timeout(
            Duration::from_secs(5),
            rethinkdb::handshake(&mut stream, user, password, &nonce),
        )
        .await
        .map_err(|_| "RethinkDB did not answer its handshake within 5 s".to_string())??;
        Ok(stream)
    }

    /// RethinkDB over its wire protocol (V1_0, SCRAM-SHA-256 as the
    /// administrator): the servers it sees connected (`server_status`) and
    /// its tables' readiness (`table_status`).
    async fn rethinkdb_health(
        &self,
        container: &str,
        admin: Option<&AdminCredentials>,
        h: &mut ServerHealth,
    ) -> Result<(), String> {
        let mut stream = self.rethinkdb_connect(container, admin).await?;
        let run = async {
            let servers = rethinkdb::query(
                &mut stream,
                1,
                rethinkdb::system_table_term("server_status"),
            )
            .await?;
            let tables =
                rethinkdb::query(&mut stream, 2, rethinkdb::system_table_term("table_status"))
                    .await?;
            Ok::<_, String>((servers, tables))
        };
        let (rows, tables) = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .map_err(|_| "RethinkDB did not answer within 5 s".to_string())??;
        let names = rethinkdb::connected_servers(&rows);
        // RethinkDB has no cluster-wide leader (primaries are per table):
        // the first connected server by name stands in for one.
        h.leader_id = names.first().cloned().unwrap_or_default();
        h.member_id = h.service.replace('-', "_");
        h.members = names
            .into_iter()
            .map(|n| MemberView {
                id: n.clone(),
                name: n,
            })
            .collect();
        h.tables = Some(rethinkdb::tables_health(&tables));
        h.healthy = true;
        Ok(())
    }

    /// Every table's placement and readiness, through the server of `service`.
    pub async fn rethinkdb_tables(
        &self,
        service: &str,
        admin: Option<&AdminCredentials>,
    ) -> Result<Vec<TableConfig>, String> {
        let container = self.running_container(service).await?;
        let mut stream = self.rethinkdb_connect(&container, admin).await?;
        let run = async {
            let config =
                rethinkdb::query(&mut stream, 1, rethinkdb::system_table_term("table_config"))
                    .await?;
            let status =
                rethinkdb::query(&mut stream, 2, rethinkdb::system_table_term("table_status"))
                    .await?;
            Ok::<_, String>((config, status))
        };
        let (config, status) = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .map_err(|_| "RethinkDB did not list its tables within 10 s".to_string())??;
        rethinkdb::table_configs(&config, &status)
    }

    /// Writes table `table_id`'s shards into `table_config` through the
    /// server of `service`; RethinkDB then moves the data.
    pub async fn rethinkdb_place_table(
        &self,
        service: &str,
        admin: Option<&AdminCredentials>,
        table_id: &str,
        shards: &[ShardConfig],
    ) -> Result<(), String> {
        let container = self.running_container(service).await?;
        let mut stream = self.rethinkdb_connect(&container, admin).await?;
        let term = rethinkdb::place_table_term(table_id, shards);
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            rethinkdb::query(&mut stream, 1, term),
        )
        .await
        .map_err(|_| "RethinkDB did not reconfigure the table within 20 s".to_string())??;
        rethinkdb::write_result(&result)
    }

    /// The main process and addresses of `container`.
    async fn inspect(&self, container: &str) -> Result<ContainerNet, String> {
        let c = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(|e| self.err("inspect a container", e))?;
        let pid = c
            .state
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("container {container} on {} has no process", self.host))?;
        let addresses = c
            .network_settings
            .and_then(|n| n.networks)
            .into_iter()
            .flat_map(|n| n.into_values())
            .filter_map(|e| e.ip_address?.parse().ok())
            .collect();
        Ok(ContainerNet { pid, addresses })
    }

    /// The running container of Swarm service `service` on this host: its
    /// main process (whose network namespace [`connect_in_netns`] enters) and
    /// its addresses.
    pub async fn service_container(&self, service: &str) -> Result<ContainerNet, String> {
        let c = self.running_container(service).await?;
        self.inspect(&c).await
    }

    /// Runs `cmd` in the running container of `service` on this host.
    pub async fn exec_in(&self, service: &str, cmd: Vec<String>) -> Result<(i64, String), String> {
        let c = self.running_container(service).await?;
        self.exec(&c, cmd, Duration::from_secs(20)).await
    }

    /// Runs `cmd` in `container`: exit code and output (stdout and stderr).
    pub async fn exec(
        &self,
        container: &str,
        cmd: Vec<String>,
        limit: Duration,
    ) -> Result<(i64, String), String> {
        use crate::docker_exec::{ExecError, run};
        run(&self.docker, container, cmd, limit)
            .await
            .map_err(|e| match e {
                ExecError::Docker { step, source } => self.err(step, source),
                ExecError::Timeout(limit) => format!(
                    "a database check on {} ran longer than {limit:?}",
                    self.host
                ),
                ExecError::NoExitCode => "an exec did not report its exit code".into(),
            })
    }
}

/// A container's main process and its addresses (on every network it is attached to).
#[derive(Debug, Clone)]
pub struct ContainerNet {
    pub pid: i64,
    pub addresses: Vec<std::net::IpAddr>,
}

/// A TCP connection to `127.0.0.1:port` inside the network namespace of
/// process `pid` (a container's ports on the overlay are not reachable from
/// the agent's namespace). The socket is made on a thread of its own that
/// enters the namespace and then ends, so no pooled thread is left in it; the
/// connected socket keeps its namespace.
pub async fn connect_in_netns(
    pid: i64,
    port: u16,
    within: Duration,
) -> Result<tokio::net::TcpStream, String> {
    let std_stream = tokio::task::spawn_blocking(move || -> Result<std::net::TcpStream, String> {
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let ns = format!("/proc/{pid}/ns/net");
                let fd = std::fs::File::open(&ns).map_err(|e| format!("open {ns}: {e}"))?;
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("enter {ns}: {e}"))?;
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    within,
                )
                .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))
            })
            .join()
            .map_err(|_| "netns thread panicked".to_string())?
        })
    })
    .await
    .map_err(|e| e.to_string())??;
    std_stream
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(std_stream).map_err(|e| e.to_string())
}

/// etcd's IDs are u64; JSON numbers that large lose nothing in serde_json,
/// but show them in hex like etcdctl's table does.
fn id_of(v: &serde_json::Value) -> String {
    v.as_u64().map(|n| format!("{n:x}")).unwrap_or_default()
}

/// Reads the output of the three etcdctl calls (health, status, member list),
/// separated by `@@` lines.
pub fn parse_etcd(out: &str, h: &mut ServerHealth) {
    let parts: Vec<&str> = out.split("@@").map(str::trim).collect();
    // etcdctl may print JSON log lines around its answer: take the first
    // array (health, status) or the object with members.
    let first_json = |s: &str| -> Option<serde_json::Value> {
        s.char_indices()
            .filter(|(_, c)| *c == '[' || *c == '{')
            .find_map(|(i, _)| {
                let v = serde_json::Deserializer::from_str(&s[i..])
                    .into_iter::<serde_json::Value>()
                    .next()?
                    .ok()?;
                (v.is_array() || v.get("members").is_some()).then_some(v)
            })
    };
    let mut errors = Vec::new();
    match parts.first().and_then(|p| first_json(p)) {
        Some(v) => {
            h.healthy = v[0]["health"].as_bool().unwrap_or(false);
            if !h.healthy {
                errors.push(format!(
                    "not healthy: {}",
                    v[0]["error"].as_str().unwrap_or("no quorum read")
                ));
            }
        }
        None => errors.push(format!(
            "endpoint health: {}",
            parts
                .first()
                .copied()
                .unwrap_or("no answer")
                .lines()
                .last()
                .unwrap_or("")
        )),
    }
    if let Some(v) = parts.get(1).and_then(|p| first_json(p)) {
        let s = &v[0]["Status"];
        h.member_id = id_of(&s["header"]["member_id"]);
        h.leader_id = id_of(&s["leader"]);
    }
    if let Some(v) = parts.get(2).and_then(|p| first_json(p)) {
        h.members = v["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| MemberView {
                        id: id_of(&m["ID"]),
                        name: m["name"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
    }
    if !errors.is_empty() {
        h.error = Some(errors.join("; "));
    }
}

/// Members by id, for the coordinator: leader id → name.
pub fn member_names(members: &[MemberView]) -> BTreeMap<String, String> {
    members
        .iter()
        .map(|m| (m.id.clone(), m.name.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "etcd-2".into(),
            kind: DatabaseKind::Etcd,
            image: "lab/etcd:1".into(),
            node: "h2".into(),
            network: "apiary".into(),
            command: vec!["/usr/bin/etcd".into(), "--name".into(), "etcd-2".into()],
            env: vec![],
            memory_bytes: 450 << 20,
            volume: "etcd-2-data".into(),
            data_dir: "/var/lib/etcd".into(),
            restart_delay: Duration::from_secs(5),
            endpoint_mode: EndpointMode::Dnsrr,
            peer_tls: None,
            admin: None,
        }
    }

    #[test]
    fn the_rethinkdb_admin_password_is_a_mounted_config_file_and_nowhere_else() {
        let admin = AdminCredentials {
            user: "admin".into(),
            password: "pw-d0e5".into(),
        };
        let with_admin = ServiceSpec {
            kind: DatabaseKind::Rethinkdb,
            admin: Some(admin),
            ..spec()
        };
        let secrets = with_admin.secrets();
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0].file, AdminCredentials::CONFIG_FILE);
        assert_eq!(secrets[0].content, "initial-password=pw-d0e5\n");
        let json = serde_json::to_value(to_docker(&with_admin, &[])).expect("test data");
        let mounted = &json["TaskTemplate"]["ContainerSpec"]["Secrets"][0];
        assert_eq!(mounted["File"]["Name"], "apiary-database-admin.conf");
        assert_eq!(mounted["File"]["Mode"], 0o400);
        for shown in [json.to_string(), format!("{with_admin:?}")] {
            assert!(!shown.contains("pw-d0e5"), "{shown}");
        }
    }

    #[test]
    fn endpoint_mode_is_vip_only_when_every_kernel_has_ip_vs() {
        assert_eq!(EndpointMode::for_kernels(true), EndpointMode::Vip);
        assert_eq!(EndpointMode::for_kernels(false), EndpointMode::Dnsrr);
        let vip = ServiceSpec {
            endpoint_mode: EndpointMode::Vip,
            ..spec()
        };
        let json = serde_json::to_value(to_docker(&vip, &[])).expect("test data");
        assert_eq!(json["EndpointSpec"]["Mode"], "vip");
        assert!(json["EndpointSpec"].get("Ports").is_none());
        assert_ne!(vip.digest(), spec().digest(), "a mode change is drift");
    }

    #[test]
    fn peer_tls_is_mounted_from_secrets_named_by_content_and_never_printed() {
        let tls = PeerTls {
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: "-----BEGIN PRIVATE KEY----- secret".into(),
        };
        let with_tls = ServiceSpec {
            peer_tls: Some(tls.clone()),
            ..spec()
        };
        assert!(!format!("{with_tls:?}").contains("secret"), "{with_tls:?}");
        let names = |spec: &ServiceSpec| -> Vec<(String, &'static str)> {
            spec.secrets()
                .into_iter()
                .map(|s| (s.name, s.file))
                .collect()
        };
        let secrets = names(&with_tls);
        let ids: Vec<(String, String)> = secrets
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), format!("id{i}")))
            .collect();
        let json = serde_json::to_value(to_docker(&with_tls, &ids)).expect("test data");
        let mounted = json["TaskTemplate"]["ContainerSpec"]["Secrets"]
            .as_array()
            .expect("secrets")
            .clone();
        assert_eq!(mounted.len(), 3);
        for (m, (i, (name, file))) in mounted.iter().zip(secrets.iter().enumerate()) {
            assert_eq!(m["SecretName"], name.as_str());
            assert_eq!(m["SecretID"], format!("id{i}"));
            assert_eq!(
                format!("/run/secrets/{}", m["File"]["Name"].as_str().unwrap_or("")),
                *file
            );
            assert_eq!(m["File"]["Mode"], 0o400);
        }
        assert!(
            secrets[2].0.starts_with("etcd-2-apiary-peer.key-"),
            "{}",
            secrets[2].0
        );
        // New content, new secret name (Swarm secrets cannot change); the
        // same content finds the same secret again.
        let rekeyed = ServiceSpec {
            peer_tls: Some(PeerTls {
                key_pem: "another".into(),
                ..tls.clone()
            }),
            ..spec()
        };
        assert_ne!(names(&rekeyed)[2].0, secrets[2].0);
        assert_eq!(names(&with_tls)[2].0, secrets[2].0);
        assert_eq!(names(&rekeyed)[0].0, secrets[0].0);
        assert_ne!(
            with_tls.digest(),
            spec().digest(),
            "turning peer TLS on is drift"
        );
    }

    #[test]
    fn docker_service_is_pinned_dnsrr_limited_with_a_volume_and_no_ports() {
        let d = to_docker(&spec(), &[]);
        let json = serde_json::to_value(&d).expect("test data");
        assert_eq!(json["EndpointSpec"]["Mode"], "dnsrr");
        assert!(json["EndpointSpec"].get("Ports").is_none());
        let t = &json["TaskTemplate"];
        assert_eq!(t["Placement"]["Constraints"][0], "node.hostname==h2");
        assert_eq!(t["Resources"]["Limits"]["MemoryBytes"], 450 << 20);
        assert_eq!(t["ContainerSpec"]["Hostname"], "etcd-2");
        assert_eq!(t["ContainerSpec"]["Mounts"][0]["Type"], "volume");
        assert_eq!(t["ContainerSpec"]["Mounts"][0]["Source"], "etcd-2-data");
        assert_eq!(t["Networks"][0]["Target"], "apiary");
        assert_eq!(t["RestartPolicy"]["Condition"], "any");
        assert_eq!(
            t["ContainerSpec"]["DNSConfig"]["Nameservers"],
            serde_json::json!(["127.0.0.1"]),
            "no upstream resolver"
        );
        assert_eq!(json["Labels"][SPEC_LABEL], spec().digest());
    }

    #[test]
    fn etcdctl_output_gives_health_leader_and_members() {
        let out = r#"[{"endpoint":"http://127.0.0.1:2379","health":true,"took":"2ms"}]
@@
[{"Endpoint":"http://127.0.0.1:2379","Status":{"header":{"cluster_id":1,"member_id":255,"revision":1,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":16,"raftIndex":8,"raftTerm":2}}]
@@
{"header":{"cluster_id":1,"member_id":255},"members":[{"ID":255,"name":"etcd-1","peerURLs":["http://etcd-1:2380"]},{"ID":16,"name":"etcd-2"},{"ID":17,"peerURLs":["http://etcd-3:2380"]}]}"#;
        let mut h = ServerHealth::default();
        parse_etcd(out, &mut h);
        assert!(h.healthy);
        assert_eq!(h.error, None);
        assert_eq!(h.member_id, "ff");
        assert_eq!(h.leader_id, "10");
        assert_eq!(h.members.len(), 3);
        assert_eq!(member_names(&h.members)["10"], "etcd-2");
        assert_eq!(h.members[2].name, "");
    }

    #[test]
    fn unhealthy_etcd_says_why() {
        let out = "{\"level\":\"warn\"}\n[{\"endpoint\":\"http://127.0.0.1:2379\",\"health\":false,\"error\":\"context deadline exceeded\"}]\nError: unhealthy cluster\n@@\nError: context deadline exceeded\n@@\n";
        let mut h = ServerHealth::default();
        parse_etcd(out, &mut h);
        assert!(!h.healthy);
        assert!(
            h.error
                .expect("test data")
                .contains("context deadline exceeded")
        );
    }
}
