//! `ctl tunnel`: a local listener whose every connection becomes one tunnel
//! stream to a port on a cluster host.

use std::net::SocketAddr;

use apiary_certs::{AdminConf, COORDINATOR_SERVER_NAME, mtls_client_config};
use apiary_proto::dial;
use apiary_proto::tunnel::{Frame, Target, frame};
use apiary_proto::tunnel_io::{self, WriteEnd};
use apiary_proto::tunnel_wire::{self, FrameReader, Outbound, Piece};
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, UnixListener};
use tonic::transport::Channel;

use crate::commands::CtlError;

/// `NODE:PORT`, `NODE:HOST:PORT` (HOST on the node: loopback or the
/// overlay), `SERVICE:PORT` (a database server or Swarm service, resolved by
/// the coordinator to its host; `database` is the database's leader) or
/// `database:admin` / `SERVER:admin` (the database's admin port).
pub fn parse_target(s: &str) -> Result<Target, CtlError> {
    let bad = || {
        CtlError::Usage(format!(
            "tunnel target {s:?}: write NODE:PORT, NODE:HOST:PORT, SERVICE:PORT or database:admin"
        ))
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (node, host, port) = match parts.as_slice() {
        [node, port] => (*node, "", *port),
        [node, host, port] => (*node, *host, *port),
        _ => return Err(bad()),
    };
    if node.is_empty() {
        return Err(bad());
    }
    if port == "admin" && host.is_empty() {
        return Ok(Target {
            node: node.into(),
            admin: true,
            ..Default::default()
        });
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok(Target {
        node: node.into(),
        host: host.into(),
        port: port.into(),
        ..Default::default()
    })
}

/// Frames a connection may have queued toward the coordinator.
const QUEUE_FRAMES: usize = 8;

#[derive(Clone)]
pub struct TunnelCtl {
    channel: Channel,
    target: Target,
}

impl TunnelCtl {
    pub fn new(conf: &AdminConf, target: Target) -> Result<Self, CtlError> {
        let id = conf.identity()?;
        let tls = mtls_client_config(&id.ca_der, &id.cert_der, &id.key_pem)?;
        let channel = dial::channel(&conf.endpoint, COORDINATOR_SERVER_NAME, tls).map_err(|e| {
            CtlError::Unreachable {
                endpoint: conf.endpoint.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(TunnelCtl { channel, target })
    }

    /// Opens one tunnel stream and waits for the agent's verdict, so a refused
    /// target is an error here rather than a silently closed socket. What
    /// `early` puts on the stream meanwhile (the client's first bytes) goes
    /// with the open request: the coordinator passes it on to the agent,
    /// which writes it as soon as it has reached the target, so no round
    /// trip waits for the verdict. The
    /// target travels in the request's headers, so the coordinator asks the
    /// agent before the request's first data arrives.
    async fn open(&self, early: impl FnOnce(Outbound)) -> Result<FrameReader, CtlError> {
        let (tx, body) = Outbound::new(QUEUE_FRAMES);
        early(tx);
        let mut inbound = tunnel_wire::call(
            self.channel.clone(),
            "/apiary.tunnel.v1.Tunnel/Open",
            tunnel_wire::target_metadata(&self.target),
            body,
        )
        .await
        .map_err(status_err)?;
        match inbound.next().await.map_err(status_err)? {
            Some(Piece::Frame(Frame {
                kind: Some(frame::Kind::Opened(true)),
            })) => Ok(inbound),
            Some(Piece::Frame(Frame {
                kind: Some(frame::Kind::Error(e)),
            })) => Err(CtlError::Failed(e)),
            _ => Err(CtlError::Failed(
                "the tunnel closed before it opened".into(),
            )),
        }
    }

    /// Opens (and closes) one connection, so a refused target fails `ctl
    /// tunnel` at start with the reason instead of on first use.
    pub async fn check(&self) -> Result<(), CtlError> {
        self.open(drop).await.map(drop)
    }

    /// Serves `listener` until cancelled: one tunnel stream per connection.
    pub async fn serve(self, listener: TcpListener) -> Result<(), CtlError> {
        loop {
            let (tcp, _) = listener
                .accept()
                .await
                .map_err(|e| CtlError::Failed(format!("accept: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let me = self.clone();
            let (rd, wr) = tcp.into_split();
            tokio::spawn(async move { me.carry(rd, wr).await });
        }
    }

    /// Serves a unix socket's connections the same way (`ctl docker`).
    pub async fn serve_unix(self, listener: UnixListener) -> Result<(), CtlError> {
        loop {
            let (unix, _) = listener
                .accept()
                .await
                .map_err(|e| CtlError::Failed(format!("accept: {e}")))?;
            let me = self.clone();
            let (rd, wr) = unix.into_split();
            tokio::spawn(async move { me.carry(rd, wr).await });
        }
    }

    async fn carry<R, W>(&self, rd: R, wr: W)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: WriteEnd,
    {
        let mut upstream = None;
        let opened = self
            .open(|tx| upstream = Some(tunnel_io::send_upstream(rd, tx)))
            .await;
        let Some(upstream) = upstream else {
            return;
        };
        match opened {
            Ok(inbound) => tunnel_io::receive_downstream(wr, inbound, upstream).await,
            Err(e) => {
                // The client may have sent bytes already: it sees a reset
                // connection, as with ssh -L when the far side refuses.
                tunnel_io::reset_connection(wr, upstream);
                eprintln!("ctl: connection refused: {e}");
            }
        }
    }
}

fn status_err(s: tonic::Status) -> CtlError {
    use tonic::Code;
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated => CtlError::Denied(s.message().to_string()),
        // The target names nothing that exists (no such node, no database).
        Code::NotFound | Code::FailedPrecondition | Code::InvalidArgument => {
            CtlError::Usage(s.message().to_string())
        }
        // Allowed, but nothing answered: the target, or every manager's engine.
        Code::Unavailable | Code::DeadlineExceeded => {
            CtlError::Unavailable(s.message().to_string())
        }
        _ => CtlError::Failed(s.message().to_string()),
    }
}

pub async fn bind(local: SocketAddr) -> Result<TcpListener, CtlError> {
    TcpListener::bind(local)
        .await
        .map_err(|e| CtlError::Failed(format!("cannot listen on {local}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_nodes_addresses_services_or_the_admin_port() {
        let t = parse_target("bee-1:8080").expect("node");
        assert_eq!(
            (t.node.as_str(), t.host.as_str(), t.port, t.admin),
            ("bee-1", "", 8080, false)
        );
        let t = parse_target("bee-1:10.232.0.5:2379").expect("address");
        assert_eq!((t.host.as_str(), t.port), ("10.232.0.5", 2379));
        let t = parse_target("database:admin").expect("admin");
        assert_eq!((t.node.as_str(), t.port, t.admin), ("database", 0, true));
        let t = parse_target("etcd-2:2379").expect("server");
        assert_eq!((t.node.as_str(), t.port), ("etcd-2", 2379));
        for bad in [
            "bee-1",
            "bee-1:0",
            ":80",
            "a:b:c:d",
            "bee-1:http",
            "bee-1:h:admin",
        ] {
            let e = parse_target(bad).expect_err(bad);
            assert_eq!(e.exit_code(), 64, "{bad}");
        }
    }
}
