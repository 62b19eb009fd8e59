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

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use apiary_proto::tunnel::tunnel_relay_client::TunnelRelayClient;
use apiary_proto::tunnel::{ListenRequest, OpenRequest, frame};
use apiary_proto::tunnel_io::pipe;
use apiary_proto::tunnel_wire::{self, Outbound};
use tokio::net::TcpStream;
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
) -> Result<TcpStream, String> {
    let swarm = crate::swarm::SwarmClient::connect(&settings.host, &settings.docker_socket)
        .await
        .map_err(|e| e.to_string())?;
    let db = crate::database::Database::new(swarm.docker().clone(), &settings.host);
    let c = db.service_container(service).await?;
    if !c.addresses.iter().any(|ip| settings.allow.allows(*ip)) {
        return Err(format!(
            "the container of {service} on {} has no address in this agent's tunnel allow-list (the overlay); refusing to enter it",
            settings.host
        ));
    }
    crate::database::connect_in_netns(c.pid, port, Duration::from_secs(5))
        .await
        .map_err(|e| format!("{service} on {}: {e} (inside its container)", settings.host))
}

/// Reaches the target `req` names, if this agent allows it.
async fn dial_target(req: &OpenRequest, settings: &TunnelSettings) -> Result<TcpStream, String> {
    let allow = &settings.allow;
    match u16::try_from(req.port) {
        Err(_) | Ok(0) => Err(format!("port {} is not a TCP port", req.port)),
        Ok(port) if !req.service.is_empty() => connect_service(settings, &req.service, port).await,
        Ok(port) => match req.host.parse::<IpAddr>() {
            Ok(ip) if allow.allows(ip) => {
                let addr = std::net::SocketAddr::new(ip, port);
                match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
                    Err(_) => Err(format!("connecting to {addr} timed out")),
                }
            }
            Ok(ip) => Err(format!(
                "target {ip}:{port} is outside this agent's tunnel allow-list ({allow}; `[tunnel] allow` in cluster.toml, `tunnel_allow` in agent.toml)"
            )),
            Err(_) => Err(format!("target {:?} is not an IP address", req.host)),
        },
    }
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
        let tcp = dial_target(&req, &settings).await;
        let verdict = match &tcp {
            Ok(_) => frame::Kind::Opened(true),
            Err(e) => {
                warn!(conn_id = req.conn_id, error = %e, "tunnel refused");
                frame::Kind::Error(e.clone())
            }
        };
        tx.frame(verdict).await;
        tcp
    };
    let (inbound, tcp) = tokio::join!(attach, reach);
    let inbound = match inbound {
        Ok(inbound) => inbound,
        Err(e) => {
            warn!(error = %e.message(), "tunnel attach failed");
            return;
        }
    };
    if let Ok(tcp) = tcp {
        let _ = tcp.set_nodelay(true);
        info!(conn_id = req.conn_id, host = %req.host, service = %req.service, port = req.port, "tunnel connection");
        pipe(tcp, inbound, tx).await;
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
}
