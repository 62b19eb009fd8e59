//! What a caller without a certificate can make the coordinator hold.
//!
//! Enrollment is the one service that needs no client certificate, so it is
//! the one an unauthenticated peer can reach, and it needs little: a token
//! and a CSR (about 1 KB), in one short call. So a connection that presented
//! no certificate lives at most [`UNAUTHENTICATED_LIFETIME`], carries
//! messages of at most [`ENROLL_MAX_MESSAGE`], and one source address may
//! hold at most [`MAX_UNAUTHENTICATED_PER_SOURCE`] of them at once. Every
//! connection, authenticated or not, carries at most
//! [`MAX_CONCURRENT_STREAMS`] streams at once. Without these, stalled
//! enrollment streams grew the coordinator by ~4 MiB each, without end.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apiary_proto::dial::BufferedTcp;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// The largest message the Enrollment service reads (a join token and a
/// CSR are about 1 KB).
pub const ENROLL_MAX_MESSAGE: usize = 16 * 1024;
/// How long a connection without a client certificate may stay open: one
/// enrollment takes well under a second.
pub const UNAUTHENTICATED_LIFETIME: Duration = Duration::from_secs(15);
/// Connections without a client certificate one source address may hold at once.
pub const MAX_UNAUTHENTICATED_PER_SOURCE: usize = 16;
/// Streams one connection may have open at once (an operator's 100
/// concurrent tunnel connections ride one).
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

type Tls = TlsStream<BufferedTcp>;

/// Unauthenticated connections per source address.
#[derive(Clone, Default)]
pub struct Sources(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One admitted unauthenticated connection; its place is given back on drop.
pub struct Slot {
    sources: Sources,
    ip: IpAddr,
}

impl Sources {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more unauthenticated connection from `ip`, or `None`
    /// (and whether this is the first refusal since the source was under
    /// its cap, so that the refusal is logged once, not per connection).
    pub fn admit(&self, ip: IpAddr) -> Result<Slot, bool> {
        let mut held = self.lock();
        let n = held.entry(ip).or_default();
        if *n >= MAX_UNAUTHENTICATED_PER_SOURCE {
            let first = *n == MAX_UNAUTHENTICATED_PER_SOURCE;
            // Past the cap by one marks "refusing" until a place frees.
            *n = MAX_UNAUTHENTICATED_PER_SOURCE + 1;
            return Err(first);
        }
        *n += 1;
        Ok(Slot {
            sources: self.clone(),
            ip,
        })
    }

    pub fn held(&self, ip: IpAddr) -> usize {
        self.lock()
            .get(&ip)
            .map_or(0, |n| (*n).min(MAX_UNAUTHENTICATED_PER_SOURCE))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.sources.lock();
        if let Some(n) = held.get_mut(&self.ip) {
            *n = (*n).min(MAX_UNAUTHENTICATED_PER_SOURCE).saturating_sub(1);
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// A TLS connection handed to the gRPC server: as it is when the peer
/// presented a certificate, with a deadline and a source slot when not.
pub struct Conn {
    tls: Tls,
    deadline: Option<Pin<Box<Sleep>>>,
    _slot: Option<Slot>,
}

impl Conn {
    pub fn authenticated(tls: Tls) -> Self {
        Conn {
            tls,
            deadline: None,
            _slot: None,
        }
    }

    pub fn unauthenticated(tls: Tls, slot: Slot) -> Self {
        Conn {
            tls,
            deadline: Some(Box::pin(tokio::time::sleep(UNAUTHENTICATED_LIFETIME))),
            _slot: Some(slot),
        }
    }

    /// Whether the peer presented a client certificate.
    pub fn has_certificate(tls: &Tls) -> bool {
        tls.get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty())
    }

    /// The error every read and write gets once the deadline has passed;
    /// the server then drops the connection.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let deadline = self.deadline.as_mut()?;
        deadline.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "a connection without a client certificate outlived its deadline",
            )
        })
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = <Tls as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_cap_and_its_places_back() {
        let sources = Sources::default();
        let ip: IpAddr = "198.18.0.9".parse().expect("an address");
        let held: Vec<Slot> = (0..MAX_UNAUTHENTICATED_PER_SOURCE)
            .map(|_| sources.admit(ip).expect("under the cap"))
            .collect();
        assert_eq!(sources.admit(ip).err(), Some(true), "first refusal: logged");
        assert_eq!(
            sources.admit(ip).err(),
            Some(false),
            "later ones: not logged again"
        );
        let other: IpAddr = "198.18.0.10".parse().expect("an address");
        assert!(
            sources.admit(other).is_ok(),
            "another source is not affected"
        );
        drop(held);
        assert_eq!(sources.held(ip), 0);
        assert!(sources.admit(ip).is_ok(), "places come back");
    }
}
