//! Dialing the coordinator: TCP, then rustls with the caller's configuration,
//! then HTTP/2. tonic's own TLS options cannot take a custom certificate
//! verifier (the join-token pin) nor report which alert ended a handshake, so
//! the TLS layer is ours and tonic only sees an already-encrypted stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Channel, Endpoint, Uri};

/// What one stream (a tunnel connection's direction) may have in flight
/// unread: the real bound on a connection's memory, with the number of
/// streams (limited per admin by `[tunnel] max_connections_per_admin`).
pub const STREAM_WINDOW: u32 = 2 << 20;
/// Far above any stream's window, on purpose: HTTP/2 gives connection window
/// back only as a stream is read, so with a connection window of a few
/// stream windows, that many tunnels stalled behind slow readers would
/// freeze every other stream on the connection. Flow control stays per
/// stream.
pub const CONNECTION_WINDOW: u32 = 1 << 30;
/// Largest HTTP/2 frame either side accepts: a tunnel frame (512 KiB) then
/// crosses as one DATA frame instead of thirty-two of the default 16 KiB.
pub const MAX_FRAME: u32 = 1 << 20;
/// Largest read under TLS (see [`BufferedTcp`]).
const READ_BUFFER: usize = 256 << 10;

/// A TCP connection read through a buffer. rustls asks its transport for at
/// most 4 KiB at a time, which on a bare socket is one `read` system call per
/// 4 KiB of bulk data (a tunnel moves hundreds of MB); the buffer turns that
/// into one call per up to 256 KiB. Writes go straight through.
///
/// The buffer exists only while it holds unread bytes: it is allocated for
/// a read and given back once drained. tokio's `BufReader` keeps its full
/// capacity for the connection's life, and the coordinator holds one
/// connection per agent: 10,000 mostly idle sessions kept 2.5 GB of buffers
/// reserved and much of it resident. Allocating per read costs one
/// malloc/free pair per 256 KiB at most under bulk data (pages are not
/// touched beyond what the read fills).
pub struct BufferedTcp {
    tcp: TcpStream,
    unread: BytesMut,
}

impl BufferedTcp {
    pub fn new(tcp: TcpStream) -> Self {
        BufferedTcp {
            tcp,
            unread: BytesMut::new(),
        }
    }
}

impl AsyncRead for BufferedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // Readiness first, so that a socket with nothing to read costs no
        // allocation.
        while this.unread.is_empty() {
            std::task::ready!(this.tcp.poll_read_ready(cx))?;
            this.unread.reserve(READ_BUFFER);
            match this.tcp.try_read_buf(&mut this.unread) {
                // 0 bytes is end of stream: `out` stays empty, which says so.
                Ok(_) => break,
                Err(e) => {
                    this.unread = BytesMut::new();
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
        let n = this.unread.len().min(out.remaining());
        out.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        if this.unread.is_empty() {
            this.unread = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for BufferedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The peer's address, for tonic (the certificate comes from the TLS layer).
impl Connected for BufferedTcp {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}

/// A lazily connected channel to `addr` (HOST:PORT) over TLS, asking for
/// `server_name` (the coordinator's certificates all carry the same name).
pub fn channel(
    addr: &str,
    server_name: &'static str,
    tls: rustls::ClientConfig,
) -> Result<Channel, tonic::transport::Error> {
    let connector = TlsConnector::from(Arc::new(tls));
    let target = addr.to_string();
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        // HTTP/2's default 64 KiB windows cap a tunnel stream at a window per
        // round trip; larger windows let bulk data flow (flow control still
        // bounds what each stream may have in flight).
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME));
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(server_name).map_err(std::io::Error::other)?;
                let tls = connector.connect(name, BufferedTcp::new(tcp)).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

/// One TLS handshake and nothing else: lets a client learn *why* the server
/// refuses it (or why it refuses the server) before it sends a single request.
pub async fn handshake(
    addr: &str,
    server_name: &'static str,
    tls: rustls::ClientConfig,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let connector = TlsConnector::from(Arc::new(tls));
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            )
        })??;
    let name = ServerName::try_from(server_name).map_err(std::io::Error::other)?;
    let mut tls = connector.connect(name, tcp).await?;
    // In TLS 1.3 the server judges our certificate after we finish; its verdict
    // (an alert, or session tickets) arrives with the first read.
    let mut buf = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(300), tls.read(&mut buf)).await {
        Ok(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Bytes come out in order however the reader slices them (rustls asks
    /// for 4 KiB or less), end of stream is seen, and a drained buffer holds
    /// no memory.
    #[tokio::test]
    async fn bytes_pass_in_order_and_a_drained_buffer_holds_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let to_send = sent.clone();
        let writer = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&to_send).await.unwrap();
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut reader = BufferedTcp::new(tcp);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        for size in [1usize, 100, 4096, 17].iter().cycle() {
            let n = reader.read(&mut chunk[..*size]).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            if reader.unread.is_empty() {
                assert_eq!(reader.unread.capacity(), 0, "drained buffer kept");
            }
        }
        writer.await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes changed or reordered");
    }
}
