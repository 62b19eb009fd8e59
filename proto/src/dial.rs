//! Dialing the coordinator: TCP, then rustls with the caller's configuration,
//! then HTTP/2. tonic's own TLS options cannot take a custom certificate
//! verifier (the join-token pin) nor report which alert ended a handshake, so
//! the TLS layer is ours and tonic only sees an already-encrypted stream.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

pub const STREAM_WINDOW: u32 = 2 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;

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
        .initial_connection_window_size(Some(CONNECTION_WINDOW));
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(server_name).map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
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
