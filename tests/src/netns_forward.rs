//! A TCP port inside a network namespace, forwarded to an address in the
//! test's own namespace: how a simulated coordinator droplet reaches the
//! fake DigitalOcean API (on the test's loopback, plain http, which the
//! DigitalOcean client accepts only on loopback) at `127.0.0.1:PORT` of
//! its own namespace, as a real one reaches api.digitalocean.com.
//!
//! One thread enters the namespace (`setns` changes only the calling
//! thread's) and listens there; a socket keeps the namespace it was made
//! in, so the connection onwards is made by a thread that stayed here.
//! Nothing else crosses: no route, no address, no NAT rule.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Stops forwarding when dropped (connections in flight finish).
pub struct NetnsForward {
    stop: Arc<AtomicBool>,
}

impl Drop for NetnsForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Listens on `listen` inside the namespace at `netns` (e.g.
/// `/run/netns/NAME`) and forwards each connection to `target` here.
pub fn forward_into(netns: &Path, listen: SocketAddr, target: SocketAddr) -> io::Result<NetnsForward> {
    let stop = Arc::new(AtomicBool::new(false));
    let (conns, accepted) = mpsc::channel::<TcpStream>();
    // Made here, so its sockets are of this namespace.
    std::thread::spawn(move || {
        for inside in accepted {
            let Ok(outside) = TcpStream::connect(target) else {
                let _ = inside.shutdown(Shutdown::Both);
                continue;
            };
            pipe(inside, outside);
        }
    });
    let (ready_tx, ready) = mpsc::channel::<io::Result<()>>();
    let netns = std::fs::File::open(netns)?;
    let flag = stop.clone();
    std::thread::spawn(move || {
        let listener = match nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)
            .and_then(|()| TcpListener::bind(listen))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
        {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    if conns.send(stream).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => return,
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(10))
        .map_err(|e| io::Error::other(e.to_string()))??;
    Ok(NetnsForward { stop })
}

/// Copies both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let one_way = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    one_way(a, b2);
    one_way(b, a2);
}
