//! The agent's end of tunnels: it listens for the coordinator's open requests
//! on its session's connection, checks each target against its allow-list
//! (loopback and the overlay by default: never an arbitrary address, so a
//! compromised coordinator cannot use agents as a general proxy), connects,
//! and carries the bytes on a stream of its own.
//!
//! A target may also be a Swarm service (`ctl tunnel database:admin`,
//! `ctl tunnel etcd-2:2379`): the agent connects to 127.0.0.1:PORT inside the
//! network namespace of that service's running container on this host (the
//! database's ports exist only on the overlay, which the agent is not on).
//! It does so only when the container is a Swarm task with an address in the
//! allow-list (the overlay), so a service target reaches one of the cluster's
//! containers, never an arbitrary address.
//!
//! A target may also be this host's Docker engine socket (`ctl docker`),
//! served only when the agent's `engine_access` allows it: the engine's API
//! is root on the host, so an agent installed by hand keeps it to itself
//! unless its operator says otherwise.
//!
//! A refusal by policy (allow-list, engine access off) is answered as
//! `denied`, a target that cannot be reached as `error`: the operator gets
//! "refused" (exit 77) for the one and "unavailable" (exit 69) for the other.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use apiary_proto::tunnel::tunnel_relay_client::TunnelRelayClient;
use apiary_proto::tunnel::{ListenRequest, OpenRequest, frame};
use apiary_proto::tunnel_io::pipe;
use apiary_proto::tunnel_wire::{self, Outbound};
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::Channel;
use tracing::{info, warn};

pub use apiary_api::tunnel::{AllowList, DEFAULT_ALLOW};

/// What the agent needs to open tunnels: its allow-list and, for service
/// targets, its engine.
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    pub allow: AllowList,
    /// The host's name (in messages) and its engine's socket.
    pub host: String,
    pub docker_socket: PathBuf,
    /// Whether admins may reach `docker_socket` (`engine_access`).
    pub engine_access: bool,
}

/// Why a target was not reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// This agent's policy does not allow the target.
    Denied(String),
    /// Allowed, but not reachable (nothing listening, engine down, ...).
    Unreachable(String),
}

impl Refusal {
    fn why(&self) -> &str {
        match self {
            Refusal::Denied(w) | Refusal::Unreachable(w) => w,
        }
    }

    fn frame(&self) -> frame::Kind {
        match self {
            Refusal::Denied(w) => frame::Kind::Denied(w.clone()),
            Refusal::Unreachable(w) => frame::Kind::Error(w.clone()),
        }
    }
}

/// A reached target.
enum Reached {
    Tcp(TcpStream),
    Engine(UnixStream),
}

/// How long a target has to answer the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// This host's engine socket, if the agent's configuration allows it.
async fn connect_engine(settings: &TunnelSettings) -> Result<UnixStream, Refusal> {
    if !settings.engine_access {
        return Err(Refusal::Denied(format!(
            "engine access is off on {}: its agent does not serve its Docker engine to admins \
             (set `engine_access = true` in its agent config, or start it with --engine-access)",
            settings.host
        )));
    }
    let socket = &settings.docker_socket;
    match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(socket)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(Refusal::Unreachable(format!(
            "the Docker engine on {} does not answer at {}: {e}",
            settings.host,
            socket.display()
        ))),
        Err(_) => Err(Refusal::Unreachable(format!(
            "the Docker engine on {} did not accept a connection at {} within {} s",
            settings.host,
            socket.display(),
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Serves open requests until the session's connection goes away.
pub async fn serve(channel: Channel, settings: TunnelSettings) {
    let mut client = TunnelRelayClient::new(channel.clone());
    let mut requests = match client.listen(ListenRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            warn!(error = %e.message(), "tunnels unavailable on this session");
            return;
        }
    };
    while let Ok(Some(req)) = requests.message().await {
        tokio::spawn(connect(channel.clone(), req, settings.clone()));
    }
}

/// Connects to `service`'s container on this host, inside its network
/// namespace, if the container is on an allowed network.
async fn connect_service(
    settings: &TunnelSettings,
    service: &str,
    port: u16,
) -> Result<TcpStream, Refusal> {
    let swarm = crate::swarm::SwarmClient::connect(&settings.host, &settings.docker_socket)
        .await
        .map_err(|e| Refusal::Unreachable(e.to_string()))?;
    let db = crate::database::Database::new(swarm.docker().clone(), &settings.host);
    let c = db
        .service_container(service)
        .await
        .map_err(Refusal::Unreachable)?;
    if !c.addresses.iter().any(|ip| settings.allow.allows(*ip)) {
        return Err(Refusal::Denied(format!(
            "the container of {service} on {} has no address in this agent's tunnel allow-list (the overlay); refusing to enter it",
            settings.host
        )));
    }
    crate::database::connect_in_netns(c.pid, port, CONNECT_TIMEOUT)
        .await
        .map_err(|e| {
            Refusal::Unreachable(format!(
                "{service} on {}: {e} (inside its container)",
                settings.host
            ))
        })
}

/// Reaches the target `req` names, if this agent allows it.
async fn dial_target(req: &OpenRequest, settings: &TunnelSettings) -> Result<Reached, Refusal> {
    if req.engine {
        return connect_engine(settings).await.map(Reached::Engine);
    }
    let allow = &settings.allow;
    let tcp = match u16::try_from(req.port) {
        Err(_) | Ok(0) => Err(Refusal::Denied(format!(
            "port {} is not a TCP port",
            req.port
        ))),
        Ok(port) if !req.service.is_empty() => connect_service(settings, &req.service, port).await,
        Ok(port) => match req.host.parse::<IpAddr>() {
            Ok(ip) if allow.allows(ip) => {
                let addr = std::net::SocketAddr::new(ip, port);
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(Refusal::Unreachable(format!(
                        "cannot connect to {addr}: {e}"
                    ))),
                    Err(_) => Err(Refusal::Unreachable(format!(
                        "connecting to {addr} timed out"
                    ))),
                }
            }
            Ok(ip) => Err(Refusal::Denied(format!(
                "target {ip}:{port} is outside this agent's tunnel allow-list ({allow}; `[tunnel] allow` in cluster.toml, `tunnel_allow` in agent.toml)"
            ))),
            Err(_) => Err(Refusal::Denied(format!(
                "target {:?} is not an IP address",
                req.host
            ))),
        },
    };
    tcp.map(Reached::Tcp)
}

async fn connect(channel: Channel, req: OpenRequest, settings: TunnelSettings) {
    let (tx, body) = Outbound::new(8);
    tx.frame(frame::Kind::Attach(req.conn_id)).await;
    // The attach stream opens while the target is dialled, so that once it
    // answers only the verdict is left to send: a connection's setup waits
    // for one of the two, not both in turn.
    let attach = tunnel_wire::call(
        channel,
        "/apiary.tunnel.v1.TunnelRelay/Attach",
        Default::default(),
        body,
    );
    let reach = async {
        let reached = dial_target(&req, &settings).await;
        let verdict = match &reached {
            Ok(_) => frame::Kind::Opened(true),
            Err(refusal) => {
                warn!(conn_id = req.conn_id, error = %refusal.why(), "tunnel refused");
                refusal.frame()
            }
        };
        tx.frame(verdict).await;
        reached
    };
    let (inbound, reached) = tokio::join!(attach, reach);
    let inbound = match inbound {
        Ok(inbound) => inbound,
        Err(e) => {
            warn!(error = %e.message(), "tunnel attach failed");
            return;
        }
    };
    match reached {
        Ok(Reached::Tcp(tcp)) => {
            let _ = tcp.set_nodelay(true);
            info!(conn_id = req.conn_id, host = %req.host, service = %req.service, port = req.port, "tunnel connection");
            let (rd, wr) = tcp.into_split();
            pipe(rd, wr, inbound, tx).await;
        }
        Ok(Reached::Engine(unix)) => {
            info!(conn_id = req.conn_id, "engine connection");
            let (rd, wr) = unix.into_split();
            pipe(rd, wr, inbound, tx).await;
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_admits_loopback_and_overlay_only() {
        let a = AllowList::default_list();
        for ok in ["127.0.0.1", "127.9.9.9", "::1", "10.232.3.4"] {
            assert!(a.allows(ok.parse().expect("ip")), "{ok}");
        }
        for no in ["10.231.0.11", "198.18.0.1", "8.8.8.8", "10.233.0.1", "::2"] {
            assert!(!a.allows(no.parse().expect("ip")), "{no}");
        }
        assert!(AllowList::parse(&["10.0.0.0".into()]).is_err());
    }

    fn settings(engine_access: bool, socket: &std::path::Path) -> TunnelSettings {
        TunnelSettings {
            allow: AllowList::default_list(),
            host: "bee-2".into(),
            docker_socket: socket.to_path_buf(),
            engine_access,
        }
    }

    #[tokio::test]
    async fn the_engine_is_served_only_when_engine_access_allows_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let socket = dir.path().join("docker.sock");
        let _engine = tokio::net::UnixListener::bind(&socket).expect("bind");
        let Err(Refusal::Denied(why)) = connect_engine(&settings(false, &socket)).await else {
            panic!("engine access off must be a policy refusal");
        };
        assert!(
            why.contains("bee-2") && why.contains("engine_access = true"),
            "{why}"
        );
        connect_engine(&settings(true, &socket))
            .await
            .expect("allowed and listening");
        let gone = dir.path().join("none.sock");
        let Err(Refusal::Unreachable(why)) = connect_engine(&settings(true, &gone)).await else {
            panic!("a missing engine is unreachable, not refused");
        };
        assert!(
            why.contains("does not answer") && why.contains("none.sock"),
            "{why}"
        );
    }
}
