//! Moving one TCP connection's bytes over a tunnel stream, for both ends that
//! hold a socket (ctl's local side, the agent's target side).

use prost::bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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

/// Copies `tcp` ⇄ the stream until both directions are done. A TCP EOF is sent
/// as `half_close`, a received `half_close` shuts our write side, an `error`
/// frame or a failed stream resets the connection.
pub async fn pipe(tcp: TcpStream, inbound: FrameReader, outbound: Outbound) {
    let (rd, wr) = tcp.into_split();
    let upstream = send_upstream(rd, outbound);
    receive_downstream(wr, inbound, upstream).await
}

/// Starts sending what `rd` reads as data frames on `outbound`, then
/// `half_close` at EOF. Started on its own, before the stream's answer
/// arrives, it lets a client's first bytes travel with the open request
/// instead of a round trip later.
pub fn send_upstream(mut rd: OwnedReadHalf, outbound: Outbound) -> JoinHandle<()> {
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
pub async fn receive_downstream(
    mut wr: OwnedWriteHalf,
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

/// Ends the connection with an RST rather than a clean FIN, so the
/// application sees a failed connection rather than a short one.
pub fn reset_connection(wr: OwnedWriteHalf, upstream: JoinHandle<()>) {
    let _ = wr.as_ref().set_zero_linger();
    upstream.abort();
}
