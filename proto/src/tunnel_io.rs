//! Moving one connection's bytes over a tunnel stream, for both ends that
//! hold a socket (ctl's local side, the agent's target side): TCP, or a
//! unix socket (a Docker engine's, `ctl docker`'s local endpoint).

use prost::bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::tunnel::{Frame, frame};
use crate::tunnel_wire::{FrameReader, Outbound, Piece};

/// Largest data frame (one socket read): big enough that per-frame costs
/// (gRPC framing, a task wake-up per hop) vanish next to the bytes, small
/// enough that the byte budget and HTTP/2 windows on the way hold a few
/// frames each, and one HTTP/2 DATA frame (`dial::MAX_FRAME`). Measured in
/// `apiary-bench tunnel` against 256 KiB: faster in 6 of 6 alternating
/// pairs (about 10 %, CPU per GB lower in all six); 64 KiB was slower.
pub const CHUNK: usize = 512 * 1024;

/// The writing half of a socket a tunnel ends in.
pub trait WriteEnd: AsyncWrite + Unpin + Send + 'static {
    /// Makes the coming close a reset where the socket has one (TCP's RST),
    /// so the application sees a failed connection rather than a short one.
    fn prepare_reset(&self) {}
}

impl WriteEnd for tokio::net::tcp::OwnedWriteHalf {
    fn prepare_reset(&self) {
        let _ = self.as_ref().set_zero_linger();
    }
}

/// A unix socket has no reset: the peer sees the connection close early.
impl WriteEnd for tokio::net::unix::OwnedWriteHalf {}

/// Copies a socket's halves ⇄ the stream until both directions are done. An
/// EOF is sent as `half_close`, a received `half_close` shuts our write
/// side, an `error` frame or a failed stream resets the connection.
pub async fn pipe<R, W>(rd: R, wr: W, inbound: FrameReader, outbound: Outbound)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: WriteEnd,
{
    let upstream = send_upstream(rd, outbound);
    receive_downstream(wr, inbound, upstream).await
}

/// Starts sending what `rd` reads as data frames on `outbound`, then
/// `half_close` at EOF. Started on its own, before the stream's answer
/// arrives, it lets a client's first bytes travel with the open request
/// instead of a round trip later.
pub fn send_upstream<R>(mut rd: R, outbound: Outbound) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        // Each read fills the spare room of one buffer and is handed on
        // without a copy (`split().freeze()`); the buffer grows again only
        // when its room runs low.
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            if buf.capacity() < CHUNK / 4 {
                buf.reserve(CHUNK);
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) => {
                    outbound.frame(frame::Kind::HalfClose(true)).await;
                    return;
                }
                Ok(_) => {
                    if !outbound.data(buf.split().freeze()).await {
                        return;
                    }
                }
                Err(e) => {
                    outbound
                        .frame(frame::Kind::Error(format!("connection reset: {e}")))
                        .await;
                    return;
                }
            }
        }
    })
}

/// Writes the stream's data to `wr` until the other side half-closes, then
/// waits for `upstream` (the connection ends when both directions have).
/// A reset (an error frame, a failed stream) ends both at once.
pub async fn receive_downstream<W: WriteEnd>(
    mut wr: W,
    mut inbound: FrameReader,
    upstream: JoinHandle<()>,
) {
    let reset = loop {
        match inbound.next().await {
            Ok(Some(Piece::Data(d))) => {
                if wr.write_all(&d).await.is_err() {
                    break true;
                }
            }
            Ok(Some(Piece::Frame(Frame {
                kind: Some(frame::Kind::HalfClose(_)),
            })))
            | Ok(None) => {
                let _ = wr.shutdown().await;
                break false;
            }
            Ok(Some(Piece::Frame(Frame {
                kind: Some(frame::Kind::Error(_)),
            })))
            | Err(_) => break true,
            Ok(Some(Piece::Frame(_))) => {}
        }
    };
    if reset {
        reset_connection(wr, upstream);
    } else {
        let _ = upstream.await;
    }
}

/// Ends the connection with a reset rather than a clean close (an RST for
/// TCP), so the application sees a failed connection rather than a short one.
pub fn reset_connection<W: WriteEnd>(wr: W, upstream: JoinHandle<()>) {
    wr.prepare_reset();
    drop(wr);
    upstream.abort();
}
