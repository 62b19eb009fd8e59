//! The listening half: answers probes on the cluster ports until Swarm needs them.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::{PortSpec, Proto, ReachError, echo_for};

/// Connections answered at once per TCP port; more are closed unanswered, so
/// a flood costs the agent a bounded number of sockets.
const MAX_TCP_CONNECTIONS: usize = 64;
/// How long a TCP prober has to send its challenge line.
const CHALLENGE_WAIT: Duration = Duration::from_secs(5);
/// A challenge line is far shorter; anything longer is not one.
const MAX_LINE: u64 = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortState {
    /// Answering probes on this address.
    Listening(SocketAddr),
    /// Something else holds the port (Swarm already running, typically):
    /// peers' probes will reach that program instead of us.
    InUse,
    /// Could not listen for another reason (the error's text).
    Failed(String),
}

/// What [`Responder::start`] managed for one port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    pub spec: PortSpec,
    pub state: PortState,
}

/// Listeners on the private address answering challenges; dropping it (or
/// [`Responder::stop`]) releases the ports.
#[derive(Debug)]
pub struct Responder {
    ip: Ipv4Addr,
    ports: Vec<PortStatus>,
    tasks: Vec<JoinHandle<()>>,
}

impl Responder {
    /// Binds every port in `ports` on `private_ip` (never on all addresses:
    /// the public side must not answer) and answers from tasks on the current
    /// tokio runtime. Sockets are created synchronously by the calling thread,
    /// so they live in that thread's network namespace.
    ///
    /// A port that is taken is reported in [`Responder::ports`], not an
    /// error: the agent may be restarted after Swarm took its ports. An
    /// address that is not on this host is an error (a configuration mistake
    /// that every port would repeat).
    pub fn start(private_ip: Ipv4Addr, ports: &[PortSpec]) -> Result<Responder, ReachError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ReachError::NoRuntime);
        }
        let mut responder = Responder {
            ip: private_ip,
            ports: Vec::with_capacity(ports.len()),
            tasks: Vec::new(),
        };
        for &spec in ports {
            let addr = SocketAddr::from((private_ip, spec.port));
            let bound = match spec.proto {
                Proto::Tcp => bind_tcp(addr).map(|l| {
                    let local = l.local_addr();
                    (local, tokio::spawn(serve_tcp(l)))
                }),
                Proto::Udp => bind_udp(addr).map(|s| {
                    let local = s.local_addr();
                    (local, tokio::spawn(serve_udp(s)))
                }),
                Proto::Esp => super::esp::raw_socket(Some(private_ip)).map(|fd| {
                    let local = Ok(SocketAddr::from((private_ip, 0)));
                    (local, tokio::spawn(super::esp::serve(fd)))
                }),
                Proto::Overlay => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the overlay is probed between containers, not listened on",
                )),
            };
            let state = match bound {
                Ok((Ok(local), task)) => {
                    responder.tasks.push(task);
                    PortState::Listening(local)
                }
                Ok((Err(e), task)) => {
                    task.abort();
                    PortState::Failed(e.to_string())
                }
                Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
                    return Err(ReachError::AddressNotLocal { ip: private_ip });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    warn!(%spec, ip = %private_ip, "port already in use; probes of it reach whoever holds it");
                    PortState::InUse
                }
                Err(e) => {
                    warn!(%spec, ip = %private_ip, error = %e, "cannot listen");
                    PortState::Failed(e.to_string())
                }
            };
            responder.ports.push(PortStatus { spec, state });
        }
        info!(ip = %private_ip, listening = responder.tasks.len(), "reachability responder started");
        Ok(responder)
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn ports(&self) -> &[PortStatus] {
        &self.ports
    }

    /// Where `spec` is answered, if it is (tests bind port 0 and read the real port here).
    pub fn local_addr(&self, spec: PortSpec) -> Option<SocketAddr> {
        self.ports.iter().find_map(|p| match p.state {
            PortState::Listening(a) if p.spec == spec => Some(a),
            _ => None,
        })
    }

    /// Stops answering and waits until every socket is closed, so Swarm can
    /// bind the ports as soon as this returns.
    pub async fn stop(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            // Cancelled is the expected result; the task's sockets are dropped by then.
            let _ = t.await;
        }
        debug!(ip = %self.ip, "reachability responder stopped");
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    // std sets SO_REUSEADDR, so a restarted agent rebinds despite TIME_WAIT.
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

async fn serve_tcp(listener: TcpListener) {
    let limit = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        debug!(%from, "too many probe connections; closing this one");
                        continue;
                    };
                    conns.spawn(async move {
                        let _permit = permit;
                        if let Err(e) = answer_tcp(stream).await {
                            debug!(%from, error = %e, "probe connection ended");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn answer_tcp(stream: TcpStream) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_LINE));
    tokio::time::timeout(CHALLENGE_WAIT, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no challenge line"))??;
    if let Some(mut echo) = echo_for(&line) {
        echo.push(b'\n');
        write.write_all(&echo).await?;
    }
    write.shutdown().await
}

async fn serve_udp(sock: UdpSocket) {
    let mut buf = [0u8; 512];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                if let Some(echo) = echo_for(&buf[..n])
                    && let Err(e) = sock.send_to(&echo, from).await
                {
                    debug!(%from, error = %e, "echo not sent");
                }
            }
            Err(e) => {
                // An ICMP error for an earlier echo can surface here; it is
                // about that prober, not about us: keep serving.
                debug!(error = %e, "udp receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
